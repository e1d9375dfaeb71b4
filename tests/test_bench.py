"""experiments/bench.py runs end to end with tiny sizes and writes valid JSON (no timing checks).

The script runs as users run it, in a subprocess, with LLVM at -O0 (XLA_FLAGS): compilation is
this test's cost, and the tiny sizes time nothing worth optimizing.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE, "KERAS_BACKEND": "jax"}
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "bench.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def test_bench_quick_end_to_end(tmp_path):
    proc = _bench("--quick", "--cpu-devices", "2", "--out", str(tmp_path / "res"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "LSTM fwd+bwd" in proc.stdout and "Targets (this run):" in proc.stdout

    data = json.loads((tmp_path / "res" / "bench.json").read_text())
    assert data["device"]["backend"] in ("cpu", "gpu", "tpu")
    assert {"jax", "flax", "jaxseq", "torch", "keras"} <= set(data["versions"])
    assert data["xla_flags"] == FAST_COMPILE
    assert data["matmul_peak"]["gflops"] > 0
    cases = [r["case"] for r in data["results"]]
    assert cases == ["lstm", "gru", "lstm_fwd", "gru_fwd", "tutorial", "replicas", "compile"]

    have_torch = not data["versions"]["torch"].startswith(("ImportError", "ModuleNotFound"))
    for r in data["results"][:4]:
        assert r["size"] == [4, 6, 3, 5] and r["flops"] > 0
        assert {"flax", "jaxseq"} <= set(r["samples_s"])
        assert ("torch" in r["samples_s"]) == have_torch
        for samples in r["samples_s"].values():
            assert len(samples) == data["repeats"] and all(s > 0 for s in samples)
        assert r["jax_stats"]["jaxseq"]["temp_bytes"] >= 0

    tutorial = data["results"][4]["rows"]
    assert {row["framework"] for row in tutorial} <= {"jaxseq", "keras"}
    assert all(row["per_epoch_s"] > 0 and row["cold_s"] > 0 for row in tutorial)
    replicas = data["results"][5]
    n = replicas["replicas"]
    plain = ["fit_replicas (1 seeds)", f"fit_replicas ({n} seeds)",
             f"fit_replicas ({n} seeds, 2 devices)"]
    assert [row["name"] for row in replicas["rows"]] == [
        "fit (1 seed)", *plain, *(name + " [scan, unrolled]" for name in plain)]
    assert all(row["cold_s"] > 0 and len(row["warm_s"]) == 2 for row in replicas["rows"])
    compile_case = data["results"][6]
    assert [row["time"] for row in compile_case["rows"]] == compile_case["lengths"]

    names = [t["target"] for t in data["targets"]]
    assert any("jaxseq / flax" in name for name in names)
    assert f"replicas ({n} seeds, 2 devices) / fit (1 seed) <= 3" in names
    assert all(t["met"] in (True, False, None) for t in data["targets"])


def test_parse_sizes():
    spec = importlib.util.spec_from_file_location("jaxseq_bench", ROOT / "experiments" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.parse_sizes("64x100x128x128, 2x3x4x5") == [(64, 100, 128, 128), (2, 3, 4, 5)]
    for bad in ("64x100x128", "64x100x128x0", "axbxcxd"):
        with pytest.raises(Exception, match="BxTxIxH"):
            bench.parse_sizes(bad)
