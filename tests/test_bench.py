"""experiments/bench.py runs end to end with tiny sizes and writes valid JSON (no timing checks).

It runs in this process (imports and compilations are the cost; a subprocess would pay the
imports again), with rank promotion allowed: the peers (Flax's cells, Keras) broadcast biases.
"""

import importlib.util
import json
from pathlib import Path

import jax
import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("jaxseq_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_end_to_end(tmp_path, capsys):
    bench = _load_bench()
    with jax.numpy_rank_promotion("allow"):
        payload = bench.main(["--quick", "--out", str(tmp_path)])
    stdout = capsys.readouterr().out
    assert "LSTM fwd+bwd" in stdout and "Targets (this run):" in stdout

    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(payload))  # what was returned is what was written
    assert data["device"]["backend"] == jax.default_backend()
    assert {"jax", "flax", "jaxseq", "torch", "keras"} <= set(data["versions"])
    assert data["matmul_peak"]["gflops"] > 0
    cases = [r["case"] for r in data["results"]]
    assert cases == ["lstm", "gru", "lstm_fwd", "gru_fwd", "tutorial", "replicas", "compile"]

    for r in data["results"][:4]:
        assert r["size"] == [4, 6, 3, 5] and r["flops"] > 0
        assert {"flax", "jaxseq"} <= set(r["samples_s"])
        for samples in r["samples_s"].values():
            assert len(samples) == data["repeats"] and all(s > 0 for s in samples)
        assert r["jax_stats"]["jaxseq"]["temp_bytes"] >= 0
    if bench.HAVE_TORCH:
        assert all("torch" in r["samples_s"] for r in data["results"][:4])

    tutorial = data["results"][4]["rows"]
    assert {row["framework"] for row in tutorial} <= {"jaxseq", "keras"}
    assert all(row["per_epoch_s"] > 0 and row["cold_s"] > 0 for row in tutorial)
    replicas = data["results"][5]
    assert [row["name"] for row in replicas["rows"]] == [
        "fit_replicas (1 seeds)", f"fit_replicas ({replicas['replicas']} seeds)"]
    compile_rows = data["results"][6]["rows"]
    assert [row["time"] for row in compile_rows] == data["results"][6]["lengths"]

    targets = {t["target"]: t for t in data["targets"]}
    assert any("jaxseq / flax" in name for name in targets)
    for t in targets.values():
        assert t["met"] in (True, False, None)


def test_bench_rejects_bad_sizes():
    bench = _load_bench()
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "64x100x128", "--cases", "lstm"])
