"""The project speaks of itself: no work-log narration (sessions, issue numbers, earlier runs,
"was X, now Y" histories) in the code, the experiments, the tests or the documentation. History
belongs in git and CHANGELOG.md; measurements belong on the benchmarks page."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]

NARRATION = [
    (r"\bsessions?\b", "a work session"),
    (r"\bissues? ?#?\d+", "an issue number"),
    (r"\b(previous|last) (run|session|round)s?\b", "an earlier run"),
    (r"\bthis (session|round)\b", "the current work round"),
    (r"\bthis run\b", "the current run (say what it is: this fit, the run of `...`)"),
    (r"\bwas [\d.]+ ?\S*,? (and is )?now\b", "a 'was X, now Y' history"),
    (r"\d[\d.]* ?(ms|us|µs|s)? ?(->|→) ?\d[\d.]* ?(ms|us|µs|s)\b", "a before -> after timing"),
    (r"\bnot measured here\b|\bno GPU was available\b", "what this machine lacked"),
    (r"\b(speed|performance) (targets?|goals?)\b|\btargets? (not )?met\b", "a work target"),
]
PATTERN = re.compile("|".join(f"(?:{p})" for p, _ in NARRATION), re.IGNORECASE)


def _hits(paths) -> list[str]:
    hits = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = PATTERN.search(line)
            if found:
                why = next(w for p, w in NARRATION if re.search(p, found.group(), re.I))
                hits.append(f"{path.relative_to(ROOT)}:{n}: {why}: {line.strip()[:120]}")
    return hits


def test_patterns_catch_narration_and_spare_plain_prose():
    assert PATTERN.search("timings from session 5") and PATTERN.search("issue 13's workloads")
    assert PATTERN.search("the previous run gave 3 ms") and PATTERN.search("144 -> 127 ms")
    assert PATTERN.search("was 3.5 ms, now 2.1") and PATTERN.search("tutorial 64 ms -> 24 us")
    assert PATTERN.search("Targets (this run)") and PATTERN.search("speed target")
    for prose in ["y: targets shaped like the output", "the input was finite",
                  "an earlier epoch's order", "seed -> (init key, key)", "the issue tracker"]:
        assert not PATTERN.search(prose), prose


def test_code_experiments_and_tests_speak_of_the_project_alone():
    this = pathlib.Path(__file__).resolve()
    paths = [p for folder in ("jaxseq", "experiments", "tests")
             for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".md", ".txt")
             and p.resolve() != this]
    assert len(paths) > 40
    hits = _hits(paths)
    assert not hits, "\n".join(hits)


def test_readme_and_docs_speak_of_the_project_alone():
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    hits = _hits(paths)
    assert not hits, "\n".join(hits)
