"""Render one run of experiments/bench.py (results/bench.json) into the benchmarks page.

Command (repository root, after a run of bench.py):

  python experiments/render_bench.py                      # results/bench.json -> docs
  python experiments/render_bench.py --json path/bench.json --page docs/benchmarks.md

It rewrites the text between `<!-- bench:start -->` and `<!-- bench:end -->` in the page (the
run's machine, CPU, versions, date, command, load average and one table per case) and between
`<!-- bench-summary:start -->` and `<!-- bench-summary:end -->` in README.md (a small table from
the same run). Every number comes from the JSON: medians of the recorded samples, and ratios
only between contenders timed in that one process.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKERS = ("<!-- bench:start -->", "<!-- bench:end -->")
SUMMARY_MARKERS = ("<!-- bench-summary:start -->", "<!-- bench-summary:end -->")
LAYER_TITLES = {"lstm": "LSTM fwd+bwd", "gru": "GRU fwd+bwd", "lstm_fwd": "LSTM forward",
                "gru_fwd": "GRU forward"}


def _med(xs) -> float:
    return statistics.median(xs)


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A Markdown table; `align` has one letter per column: l(eft) or r(ight)."""
    rule = ["---" if a == "l" else "---:" for a in align]
    return ["| " + " | ".join(r) + " |" for r in [header, rule, *rows]]


def _size(size) -> str:
    return "x".join(str(s) for s in size)


def environment(run: dict) -> list[str]:
    versions = run.get("versions", {})
    load = run.get("load_average") or {}
    start, end = load.get("start"), load.get("end")
    load_s = "n/a" if start is None else (
        f"{start[0]:.2f} at the start, {end[0]:.2f} at the end (1-minute; "
        f"{run['machine'].get('cpu_count')} CPUs)" if end else f"{start[0]:.2f} at the start")
    device = run.get("device", {})
    peak = run.get("matmul_peak", {}).get("gflops")
    lines = [
        f"- **Command**: `python experiments/{run['command']}`",
        f"- **Date**: {run.get('date', 'not recorded')}",
        f"- **Machine**: {run['machine']['cpu']}, {run['machine']['cpu_count']} CPUs, "
        f"{run['machine']['platform']}",
        f"- **JAX device**: {device.get('backend')} ({device.get('kind')}, "
        f"{device.get('count')} device(s))",
        "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- **Load average**: {load_s}",
        f"- **Method**: median of {run.get('repeats')} interleaved rounds after 2 warm-up calls",
    ]
    if run.get("torch_threads") is not None:
        lines.append(f"- **torch**: {run['torch_device']}, {run['torch_threads']} threads")
    if peak:
        lines.append(f"- **Matmul peak** (best large float32 matmul): {peak:.1f} GFLOP/s")
    if run.get("xla_flags"):
        lines.append(f"- **XLA_FLAGS**: `{run['xla_flags']}`")
    if run.get("jaxseq_optimization_level", 3) != 3:
        lines.append("- **jaxseq's drivers**: XLA:CPU optimization level "
                     f"{run['jaxseq_optimization_level']} (JAXSEQ_OPTIMIZATION_LEVEL)")
    return lines


def layer_section(r: dict) -> list[str]:
    names = list(r["samples_s"])
    ref = names[0]
    ref_med = _med(r["samples_s"][ref])
    rows = []
    for name in names:
        med = _med(r["samples_s"][name])
        temp = r.get("jax_stats", {}).get(name, {}).get("temp_bytes")
        rows.append([name, f"{med * 1e3:.1f}", f"{med / ref_med:.2f}",
                     f"{r['flops'] / med / 1e9:.1f}",
                     "" if temp is None else f"{temp / 2**20:.1f}"])
    title = f"### {LAYER_TITLES[r['case']]}, {_size(r['size'])} (BxTxIxH)"
    return [title, "", *_table(["contender", "median ms", f"/ {ref}", "GFLOP/s", "temp MB"],
                               rows, "lrrrr")]


def tutorial_section(r: dict) -> list[str]:
    rows = [[row["framing"], row["framework"], f"{row['epochs']} x {row['batch_size']}",
             f"{row['per_epoch_s'] * 1e6:.1f}", f"{row['cold_s']:.2f}"] for row in r["rows"]]
    return ["### The TimeDistributed tutorial: `fit` per epoch (warm) and from cold", "",
            *_table(["framing", "framework", "epochs x batch", "µs / epoch", "cold fit s"],
                    rows, "lllrr")]


def replicas_section(r: dict) -> list[str]:
    warm = {row["name"]: _med(row["warm_s"]) for row in r["rows"]}
    base = warm.get("fit (1 seed)")
    rows = [[f"`{row['name']}`", f"{warm[row['name']] * 1e3:.1f}",
             "" if base is None else f"{warm[row['name']] / base:.2f}", f"{row['cold_s']:.2f}"]
            for row in r["rows"]]
    epochs = r["rows"][0]["epochs"] if r["rows"] else "?"
    return [f"### Replicas: many_to_many, {epochs} epochs", "",
            *_table(["run", "warm ms", "/ fit (1 seed)", "cold s"], rows, "lrrr")]


def cv_section(r: dict) -> list[str]:
    rows = [[row["name"], f"{_med(row['warm_s']):.2f}", f"{row['cold_s']:.2f}",
             f"{row['max_rel_diff']:.1e}"] for row in r["rows"]]
    return [f"### Cross-validation: {r['folds']} folds x {r['seeds']} seeds, {r['epochs']} "
            "epochs", "",
            *_table(["run", "warm s", "cold s", "scores: max rel. diff to the loop"], rows,
                    "lrrr")]


def minimal_section(r: dict) -> list[str]:
    gru = _med(r["samples_s"]["GRU"])
    rows = [[k, f"{_med(v) * 1e3:.2f}", f"{_med(v) / gru:.2f}",
             f"{r['jax_stats'][k]['compile_s']:.2f}"] for k, v in r["samples_s"].items()]
    return [f"### MinGRU / MinLSTM fwd+bwd, {_size(r['shape'])} (BxTxIxH)", "",
            *_table(["layer", "median ms", "/ GRU", "compile s"], rows, "lrrr")]


def train_section(r: dict) -> list[str]:
    n, t, f, h, bs = r["shape"]
    base = _med(r["per_epoch_s"]["jaxseq"])
    rows = [[k, f"{_med(v) * 1e3:.2f}", f"{_med(v) / base:.2f}"]
            for k, v in r["per_epoch_s"].items()]
    return [f"### Training {r['workload']}: LSTM({h}) + Dense(1), {n} x {t} x {f}, batch {bs}",
            "", *_table(["run", "ms / epoch", "/ jaxseq"], rows, "lrr"), "",
            f"Compute bound: {r['bound_s'] * 1e3:.2f} ms an epoch ({r['flops'] / 1e6:.0f} MFLOP "
            f"at the measured small-GEMM rate, {r['small_gemm_gflops']:.0f} GFLOP/s)."]


def compile_section(r: dict) -> list[str]:
    rows = [[row["name"], str(row["time"]), f"{_med(row['samples_s']):.2f}"] for row in r["rows"]]
    b, i, h = r["size_bih"]
    return [f"### Compile time, LSTM fwd+bwd (B={b}, I={i}, H={h}), first call", "",
            *_table(["contender", "T", "s"], rows, "lrr")]


def _forecaster_table(result: dict) -> list[str]:
    kinds = ("vmap", "vmap, one chunk", "concurrent", "auto")
    rows = []
    for row in result["rows"]:
        med, over = row["median_s"], row["loop_over"]
        cells = [f"{med[k]:.2f} ({over[k]:.2f}x)" if k in med else "" for k in kinds]
        rows.append([row["name"], str(row["epochs"]), str(sum(row["epochs_run"])),
                     f"{med['loop of fits']:.2f}", *cells, row["auto_picks"]])
    return _table(["row", "epochs", "epochs run (all seeds)", "loop of fits s",
                   *[f"{k} s (loop / it)" for k in kinds], "auto picks"], rows, "lrrrrrrrl")


def forecaster_section(r: dict) -> list[str]:
    seeds = r["rows"][0]["seeds"] if r["rows"] else "?"
    epochs = {row["name"]: row["epochs"] for row in r["rows"]}
    lines = [f"### fit_replicas against a loop of fits: forecaster, {seeds} seeds", "",
             "elec_equip (statsmodels), LSTM(32) + Dense(1), 24-step windows, batch 32; "
             "\"early stopping\": validation_split 0.2, EarlyStopping(patience 50) for up to "
             f"{epochs.get('early stopping')} epochs; \"fixed\": {epochs.get('fixed')} epochs. "
             "Each table ran in a fresh process with JAX's default configuration (one CPU "
             "device). Warm medians in seconds; in brackets loop / strategy (above 1: the "
             "replicas are faster).", "",
             f"On all {r.get('cores')} cores:", "", *_forecaster_table(r)]
    if "one_core" in r:
        lines += ["", "Pinned to one core:", "", *_forecaster_table(r["one_core"])]
    return lines


SECTIONS = {"forecaster": forecaster_section, "tutorial": tutorial_section,
            "replicas": replicas_section, "cross_validation": cv_section,
            "minimal": minimal_section, "train": train_section, "compile": compile_section}


def render(run: dict) -> str:
    lines = environment(run)
    for r in run["results"]:
        lines.append("")
        if "size" in r:
            lines += layer_section(r)
        elif r["case"] in SECTIONS and r.get("rows", True):
            lines += SECTIONS[r["case"]](r)
    for note in run.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines)


def summary(run: dict) -> str:
    """README's small table: the tutorial's fit per epoch against Keras, the LSTM's fwd+bwd
    against torch, and the forecaster's seeds (`fit_replicas` as "auto" runs it, on every core)
    against a loop of `fit` calls, from the same run."""
    rows = []
    for r in run["results"]:
        if r["case"] == "tutorial":
            per = {(row["framing"], row["framework"]): row["per_epoch_s"] for row in r["rows"]}
            for (framing, fw), s in per.items():
                if fw == "jaxseq" and (framing, "keras") in per:
                    k = per[(framing, "keras")]
                    rows.append([f"tutorial {framing}, `fit` µs/epoch", f"{s * 1e6:.1f}",
                                 f"Keras 3 {k * 1e6:.0f}"])
        elif r["case"] == "lstm" and {"jaxseq", "torch"} <= set(r["samples_s"]):
            j, t = _med(r["samples_s"]["jaxseq"]), _med(r["samples_s"]["torch"])
            rows.append([f"LSTM fwd+bwd {_size(r['size'])}, ms", f"{j * 1e3:.1f}",
                         f"torch {t * 1e3:.1f}"])
        elif r["case"] == "forecaster":
            for row in r["rows"]:
                med = row["median_s"]
                rows.append([f"forecaster, {row['seeds']} seeds ({row['name']}), "
                             f"`fit_replicas` s", f"{med['auto']:.2f}",
                             f"loop of `fit` {med['loop of fits']:.2f}"])
    head = f"{run['machine']['cpu']}, {run['machine']['cpu_count']} CPUs, {run.get('date', '')}"
    start = (run.get("load_average") or {}).get("start")
    if start:  # a busy machine slows every contender, multi-threaded ones most
        head += f", load average {start[0]:.1f} at the start"
    return "\n".join([*_table(["workload", "jaxseq", "peer (same process)"], rows, "lrr"), "",
                      f"({head}; `python experiments/{run['command']}`.)"])


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"markers {start!r} ... {end!r} not found")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text, count=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "bench.json")
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    run = json.loads(args.json.read_text())
    args.page.write_text(replace_between(args.page.read_text(), MARKERS, render(run)))
    args.readme.write_text(replace_between(args.readme.read_text(), SUMMARY_MARKERS,
                                           summary(run)))
    print(f"rendered {args.json} into {args.page} and {args.readme}")


if __name__ == "__main__":
    main()
