"""experiments/bench.py runs with tiny sizes on a few cases and records consistent numbers.

The script runs as users run it, in a subprocess, with the suite's XLA_FLAGS and
JAXSEQ_OPTIMIZATION_LEVEL (conftest: level 0 for every program): compilation is this test's cost,
and the tiny sizes time nothing worth optimizing. The cases that train
(tutorial, train, replicas, cross_validation) are left out: they time jaxseq.fit and
cross_validate, whose own tests are elsewhere.
"""

import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax"}  # XLA_FLAGS and the level: the suite's
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "bench.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def _median(xs):
    return statistics.median(xs)


def _table_rows(stdout: str, title: str) -> dict[str, tuple[float, float]]:
    """{contender: (median ms, ratio)} from the printed table whose first line starts with
    `title`."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        m = re.match(r"\s+(\S+(?: \[\w+\])?)\s+([\d.]+)\s+([\d.]+)\s", line)
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return rows


def test_bench_layer_and_compile_cases(tmp_path):
    """Two layer cases and the compile case (no training API), tiny sizes: the recorded
    numbers are consistent with each other: positive times, every printed ratio the quotient
    of the medians it comes from, the printed table the JSON's numbers."""
    proc = _bench("--quick", "--cases", "lstm,gru_fwd,compile,minimal", "--repeats", "3",
                  "--out", str(tmp_path / "res"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "res" / "bench.json").read_text())
    assert data["device"]["backend"] in ("cpu", "gpu", "tpu")
    assert {"jax", "flax", "jaxseq", "torch", "keras"} <= set(data["versions"])
    assert data["xla_flags"] == os.environ["XLA_FLAGS"]
    # the drivers' level the suite's processes inherit (conftest)
    assert data["jaxseq_optimization_level"] == int(os.environ["JAXSEQ_OPTIMIZATION_LEVEL"])
    assert data["repeats"] == 3
    assert [r["case"] for r in data["results"]] == ["lstm", "gru_fwd", "compile", "minimal"]
    assert set(data["case_wall_s"]) == {"lstm", "gru_fwd", "compile", "minimal"}
    assert 0 < sum(data["case_wall_s"].values()) <= data["total_wall_s"]

    peak = data["matmul_peak"]
    for shape, samples in peak["samples_s"].items():
        m, k, n = map(int, shape.split("x"))
        assert all(s > 0 for s in samples)
        assert peak["gflops_by_shape"][shape] == pytest.approx(
            2 * m * k * n / _median(samples) / 1e9, rel=1e-12)
    assert peak["gflops"] == max(peak["gflops_by_shape"].values())

    have_torch = not data["versions"]["torch"].startswith(("ImportError", "ModuleNotFound"))
    peers = ["torch"] * have_torch + ["flax", "jaxseq"]  # --quick: no "jaxseq [scan]"
    lstm, gru_fwd, compile_case, minimal = data["results"]
    assert minimal["shape"] == [4, 8, 3, 5]
    assert {"GRU", "LSTM", "MinGRU sequential", "MinGRU parallel", "MinLSTM sequential"} <= set(
        minimal["samples_s"])
    for name, samples in minimal["samples_s"].items():
        assert len(samples) == 3 and all(s > 0 for s in samples)
        assert minimal["jax_stats"][name]["compile_s"] > 0
        assert re.search(rf"  {re.escape(name)}\s+{_median(samples) * 1e3:.2f}\s", proc.stdout)
    medians = {}
    for r, gates, passes, title in [(lstm, 4, 3, "LSTM fwd+bwd"), (gru_fwd, 3, 1, "GRU forward")]:
        b, t, i, h = r["size"]
        assert r["size"] == [4, 6, 3, 5]
        # The documented count: 2*gates*B*T*H*(I+H) forward, the backward twice that.
        assert r["flops"] == 2 * gates * b * t * h * (i + h) * passes
        assert list(r["samples_s"]) == peers
        for samples in r["samples_s"].values():
            assert len(samples) == 3 and all(0 < s < data["total_wall_s"] for s in samples)
        assert set(r["jax_stats"]) == {"flax", "jaxseq"}
        for stats in r["jax_stats"].values():
            assert stats["compile_s"] > 0 and stats["temp_bytes"] >= 0
        med = {k: _median(v) for k, v in r["samples_s"].items()}
        medians[r["case"]] = med
        printed = _table_rows(proc.stdout, title)
        assert list(printed) == peers
        for name, (ms, ratio) in printed.items():
            assert ms == pytest.approx(med[name] * 1e3, abs=0.051)
            assert ratio == pytest.approx(med[name] / med[peers[0]], abs=0.0051)

    assert [(row["name"], row["time"]) for row in compile_case["rows"]] == [
        ("jaxseq", 3), ("jaxseq", 30)]
    assert compile_case["lengths"] == [3, 30]
    assert all(s > 0 for row in compile_case["rows"] for s in row["samples_s"])
    assert "targets" not in data  # the record holds measurements, no scorecard


def test_bench_rejects_unknown_cases(tmp_path):
    proc = _bench("--cases", "lstm,nope", "--out", str(tmp_path / "res"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown case(s) ['nope']" in proc.stderr
    assert not (tmp_path / "res").exists()


def test_parse_sizes():
    spec = importlib.util.spec_from_file_location("jaxseq_bench", ROOT / "experiments" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_sizes("64x100x128x128, 2x3x4x5") == [(64, 100, 128, 128), (2, 3, 4, 5)]
    for bad in ("64x100x128", "64x100x128x0", "axbxcxd"):
        with pytest.raises(Exception, match="BxTxIxH"):
            bench.parse_sizes(bad)
