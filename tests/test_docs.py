"""The documentation: every Python block of README.md and docs/*.md runs as written, the site
builds with `mkdocs build --strict` (broken links, bad references and malformed docstrings
fail), every public name has a docstring, and the benchmarks page renders from bench.json."""

import doctest
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

import jaxseq as js

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
KERAS_PAGES = {"docs/interop.md"}
# Printed values are compared as doctests; `...` elides what the text does not quote.
SYBIL = Sybil(parsers=[
    PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE),
    SkipParser(),
])


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
    """The page's blocks run in order in one fresh namespace (as a reader runs them); files the
    examples write land in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    document = SYBIL.parse(ROOT / page)
    examples = list(document.examples())
    # Keras' own layers broadcast ranks, which the suite's strict config refuses (as in
    # tests/test_interop.py); every other page runs under the strict "raise".
    promotion = "allow" if page in KERAS_PAGES else "raise"
    with jax.numpy_rank_promotion(promotion):
        for example in examples:
            example.evaluate()
    n_python = sum(1 for line in (ROOT / page).read_text().splitlines()
                   if line.strip() == "```python")
    assert len(examples) >= n_python  # every ```python block was parsed (skips count too)


def test_the_pages_carry_python_blocks():
    counts = {p: (ROOT / p).read_text().count("```python") for p in PAGES}
    assert counts["README.md"] >= 2 and counts["docs/training.md"] >= 3, counts


def _public_objects():
    modules = [js, *(getattr(js, name) for name in
                     ("training", "evaluation", "checkpointing", "interop", "problems", "models",
                      "parallel", "replicas"))]
    for module in modules:
        names = getattr(module, "__all__", None) or [
            n for n, v in vars(module).items()
            if not n.startswith("_") and getattr(v, "__module__", "").startswith("jaxseq")]
        for name in names:
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType) or not callable(obj):
                continue
            yield f"{module.__name__}.{name}", obj


def test_every_public_function_and_class_has_a_docstring():
    missing = [name for name, obj in _public_objects() if not inspect.getdoc(obj)]
    assert not missing, f"public names without a docstring (no API reference): {missing}"


def test_mkdocs_build_strict(tmp_path):
    """The whole site, offline: nav, links between pages, the API reference from the
    docstrings (mkdocstrings), the changelog snippet."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "site" / "api" / "jaxseq" / "index.html").read_text()
    for name in ("jaxseq.LSTM", "jaxseq.fit", "jaxseq.TimeDistributed",
                 "jaxseq.training.predict.predict", "jaxseq.summary.summary"):
        assert f'id="{name}"' in api, name
    bench = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "<table>" in bench  # the rendered run's tables




def _render_module():
    spec = importlib.util.spec_from_file_location("render_bench",
                                                  ROOT / "experiments" / "render_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _synthetic_run() -> dict:
    return {
        "command": "bench.py --cases lstm,tutorial,replicas --repeats 3",
        "date": "2030-01-02 03:04 UTC",
        "machine": {"cpu": "Test CPU 9000", "cpu_count": 4, "platform": "Linux-test"},
        "device": {"backend": "cpu", "kind": "cpu", "count": 1},
        "torch_device": "cpu", "torch_threads": 4,
        "versions": {"jax": "9.9.9", "jaxseq": "0.1.0"},
        "xla_flags": "",
        "load_average": {"start": [0.5, 0.4, 0.3], "end": [1.25, 0.9, 0.5]},
        "repeats": 3,
        "matmul_peak": {"gflops": 100.0},
        "results": [
            {"case": "lstm", "size": [2, 3, 4, 5], "flops": 2_000_000_000,
             "samples_s": {"torch": [0.03, 0.02, 0.04], "flax": [0.05, 0.05, 0.06],
                           "jaxseq": [0.01, 0.011, 0.012]},
             "jax_stats": {"jaxseq": {"temp_bytes": 3 * 2**20}}},
            {"case": "tutorial", "rows": [
                {"framing": "many_to_many", "framework": "jaxseq", "epochs": 1000,
                 "batch_size": 1, "cold_s": 1.5, "warm_s": [0.02], "per_epoch_s": 20e-6},
                {"framing": "many_to_many", "framework": "keras", "epochs": 1000,
                 "batch_size": 1, "cold_s": 2.5, "warm_s": [1.2], "per_epoch_s": 1.2e-3}]},
            {"case": "replicas", "replicas": 32, "rows": [
                {"name": "fit (1 seed)", "epochs": 1000, "cold_s": 1.0, "warm_s": [0.02, 0.03]},
                {"name": "fit_replicas (32 seeds)", "epochs": 1000, "cold_s": 2.0,
                 "warm_s": [0.1, 0.12, 0.11]}]},
            {"case": "forecaster", "cores": 4, "rows": [
                {"name": "fixed", "seeds": 3, "epochs": 7, "epochs_run": [7, 7, 7],
                 "median_s": {"loop of fits": 6.0, "vmap": 4.0, "concurrent": 2.0, "auto": 2.4},
                 "loop_over": {"loop of fits": 1.0, "vmap": 1.5, "concurrent": 3.0,
                               "auto": 2.5},
                 "auto_picks": "concurrent"}]},
        ],
        "targets": [{"target": "anything", "value": 1.0, "limit": 0.5, "met": False}],
        "notes": ["Keras rows skipped (test)"],
    }


def test_render_bench_renders_a_run_into_page_and_readme(tmp_path):
    render = _render_module()
    run = _synthetic_run()
    (tmp_path / "bench.json").write_text(json.dumps(run))
    page = tmp_path / "benchmarks.md"
    page.write_text("intro\n<!-- bench:start -->\nold numbers\n<!-- bench:end -->\noutro\n")
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench-summary:start -->\n<!-- bench-summary:end -->\nb\n")
    render.main(["--json", str(tmp_path / "bench.json"), "--page", str(page),
                 "--readme", str(readme)])
    text = page.read_text()
    assert text.startswith("intro\n<!-- bench:start -->\n") and text.endswith("outro\n")
    assert "old numbers" not in text
    for fact in ("Test CPU 9000, 4 CPUs", "2030-01-02 03:04 UTC", "jax 9.9.9",
                 "`python experiments/bench.py --cases lstm,tutorial,replicas --repeats 3`",
                 "0.50 at the start, 1.25 at the end", "median of 3 interleaved rounds",
                 "Keras rows skipped (test)"):
        assert fact in text, fact
    # medians and ratios from the samples: torch 30 ms, jaxseq 11 ms -> 0.37; 2e9 FLOP / 11 ms
    assert "| jaxseq | 11.0 | 0.37 | 181.8 | 3.0 |" in text
    assert "| torch | 30.0 | 1.00 | 66.7 |  |" in text
    assert "| many_to_many | keras | 1000 x 1 | 1200.0 | 2.50 |" in text
    assert "| `fit_replicas (32 seeds)` | 110.0 | 4.40 | 2.00 |" in text  # 110 / 25 ms
    assert ("| fixed | 7 | 21 | 6.00 | 4.00 (1.50x) |  | 2.00 (3.00x) | 2.40 (2.50x) "
            "| concurrent |") in text
    assert "On all 4 cores" in text and "Pinned to one core" not in text
    assert "anything" not in text and "target" not in text.lower()  # no targets on the page
    summary = readme.read_text()
    assert "| LSTM fwd+bwd 2x3x4x5, ms | 11.0 | torch 30.0 |" in summary
    assert "| tutorial many_to_many, `fit` µs/epoch | 20.0 | Keras 3 1200 |" in summary
    assert "| forecaster, 3 seeds (fixed), `fit_replicas` s | 2.40 | loop of `fit` 6.00 |" \
        in summary
    assert "load average 0.5 at the start" in summary
    assert summary.startswith("a\n<!-- bench-summary:start -->\n") and summary.endswith("b\n")


def test_render_bench_refuses_a_page_without_markers(tmp_path):
    render = _render_module()
    with pytest.raises(ValueError, match="markers"):
        render.replace_between("no markers here", render.MARKERS, "x")
