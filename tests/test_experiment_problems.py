"""experiments/problems.py end to end, shrunken (`--quick`): valid JSON and a PNG."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import jax
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "problems.py"


@pytest.fixture(scope="module")
def script():
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("experiments_problems", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_problems_quick_run_writes_json_and_png(script, tmp_path):
    with jax.numpy_rank_promotion("allow"):  # as a user runs it (the suite is strict)
        # Two problems (one per head: sequence and last step) keep the test short.
        results = script.main(["--quick", "--seeds", "2", "--problems", "copy", "sine",
                               "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "problems.json").read_text())
    assert payload["settings"]["seeds"] == 2 and payload["settings"]["epochs"] == 2
    rows = payload["results"]
    assert rows == json.loads(json.dumps(results))
    assert [r["problem"] for r in rows] == ["copy", "sine"]
    assert {r["cell"] for r in rows} == {"LSTM"}
    for r in rows:
        assert len(r["mse"]) == len(r["skill"]) == 2
        assert r["baseline_mse"] > 0 and all(math.isfinite(m) for m in r["mse"])
        for m, s in zip(r["mse"], r["skill"], strict=True):
            assert math.isclose(s, 1 - m / r["baseline_mse"], rel_tol=1e-6, abs_tol=1e-9)
    png = (tmp_path / "problems.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_table_has_a_row_per_problem_and_length(script):
    rows = [
        {"problem": "echo", "time_steps": 10, "baseline_mse": 0.1, "cell": c,
         "skill_mean": 0.5, "skill_std": 0.1} for c in ("LSTM", "GRU")
    ]
    table = script.table(rows)
    assert table.splitlines()[0] == "| problem | t | baseline MSE | LSTM | GRU |"
    assert "| echo | 10 | 0.1000 | 0.500 ± 0.100 | 0.500 ± 0.100 |" in table
