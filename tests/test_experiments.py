"""The experiment scripts run end to end (shrunken settings) and write valid JSON and PNG."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _run(script: str, *args: str, cwd: Path) -> str:
    # the scripts inherit the suite's XLA_FLAGS (conftest: the faster-compiling loop emitters)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_timedistributed_experiment(tmp_path):
    out = tmp_path / "res"
    cache = tmp_path / "cache"
    stdout = _run("timedistributed.py", "--epochs", "3", "--out", str(out),
                  "--cache-dir", str(cache), cwd=tmp_path)
    for framing in ("one_to_one", "many_to_one", "many_to_many"):
        assert f"== {framing}" in stdout
    assert "Total params: 146" in stdout and "Total params: 170" in stdout
    data = json.loads((out / "timedistributed.json").read_text())
    results = {r["framing"]: r for r in data["results"]}
    assert {k: r["total_params"] for k, r in results.items()} == {
        "one_to_one": 146, "many_to_one": 170, "many_to_many": 146}
    assert results["many_to_one"]["params"] == {"lstm": 140, "dense": 30}
    for r in results.values():
        assert len(r["loss"]) == 3 and len(r["prediction"]) == len(r["target"]) == 5
        assert r["wall_s_with_compile"] > r["wall_s_without_compile"] > 0
    assert (out / "timedistributed.png").read_bytes().startswith(PNG)
    assert any(cache.iterdir())  # the persistent compilation cache was written


def test_skill_experiment(tmp_path):
    # One framing keeps the test short (each framing compiles its own programs); the framing
    # loop itself is exercised by test_timedistributed_experiment's script.
    # --cpu-devices 2 shards the replicas over two CPU devices: 3 replicas round up to 4.
    out = tmp_path / "res"
    stdout = _run("skill.py", "--framing", "many_to_many", "--replicas", "3", "--epochs", "2",
                  "--unroll", "--cpu-devices", "2", "--out", str(out), cwd=tmp_path)
    assert "RMSE mean ± std" in stdout and "many_to_many" in stdout
    data = json.loads((out / "skill.json").read_text())
    (r,) = data["results"]
    assert r["framing"] == "many_to_many" and r["epochs"] == 2
    assert r["replicas"] == 4 and len(r["rmse"]) == 4 and len(r["final_loss"]) == 4
    rmse, failed = np.asarray(r["rmse"]), np.asarray(r["nonfinite"], bool)
    kept = np.isfinite(rmse) & ~failed  # the replicas the summary may use
    assert r["summary"]["n"] == kept.sum() and r["summary"]["n_nonfinite"] == 4 - kept.sum()
    assert r["summary"]["mean"] == pytest.approx(rmse[kept].mean(), rel=1e-12)
    errors = np.asarray(r["max_abs_error"])
    assert r["learned_fraction"] == np.mean(np.isfinite(errors) & (errors <= r["tolerance"]))
    assert r["speedup"] > 0 and r["wall_s_sequential"] > 0
    assert (out / "skill.png").read_bytes().startswith(PNG)
    curve = json.loads((out / "repeats.json").read_text())["many_to_many"]
    finite = rmse[np.isfinite(rmse)]
    assert curve["n"] == list(range(1, finite.size + 1))
    np.testing.assert_allclose(curve["mean"], np.cumsum(finite) / curve["n"], rtol=1e-12)
    assert "How many repeats?" in stdout and (out / "repeats.png").read_bytes().startswith(PNG)


def test_moving_square_experiment(tmp_path):
    png = tmp_path / "moving_square.png"
    stdout = _run("moving_square.py", "--quick", "--png", str(png), cwd=tmp_path)
    assert "params 2633" in stdout and "persistence MSE" in stdout
    assert png.read_bytes().startswith(PNG)


def test_seq2seq_experiment(tmp_path):
    stdout = _run("seq2seq.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    assert "free-running MSE" in stdout
    r = json.loads((tmp_path / "seq2seq.json").read_text())
    assert r["free_running_mse"] < r["persistence_mse"]  # the inference loop learned something
    assert r["first_step_max_diff"] < 1e-5  # same first decoder input on both routes
    assert r["teacher_forced_mse"] < r["persistence_mse"]
