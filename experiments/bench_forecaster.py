"""bench.py's "forecaster" case: `fit_replicas` against a loop of `fit` calls with the same
arguments, on a real monthly series that ships with statsmodels (the euro area's electrical
equipment orders index, `statsmodels.datasets.elec_equip`, 1995-2012).

Rows: LSTM(32) -> Dense(1) on 24-step windows, batch 32, 10 seeds; "early stopping":
validation_split 0.2 and EarlyStopping(patience 50, restore_best_weights) for up to 1000 epochs;
"fixed": 100 epochs, no validation. Each row times the loop and each strategy, warm, in
interleaved rounds, and reports loop / strategy (above 1: the replicas are faster) and the
strategy "auto" picks. The case runs twice, each time in a child process with JAX's default
configuration (one CPU device, whatever `--cpu-devices` gave the parent): on every core this
process may use, and with the CPU affinity of one core (`os.sched_setaffinity`: XLA's threads
and "concurrent"'s host threads then share that core). "vmap, one chunk" is strategy "vmap" with
`epochs_per_chunk=epochs`: the host never wakes, so the replica batch never compacts (every
replica runs until the last one stops); "vmap" compacts the live replicas between chunks
(`jaxseq.training.compaction`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

import jaxseq as js
from jaxseq.training import strategies

ROWS = {"early stopping": dict(epochs=1000, validation_split=0.2, patience=50),
        "fixed": dict(epochs=100, validation_split=None, patience=None)}


def series_windows(window: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(x (n, window, 1), y (n, 1)): the standardized series' windows and next values."""
    from statsmodels.datasets import elec_equip

    s = elec_equip.load_pandas().data.iloc[:, 0].to_numpy(np.float32)
    s = (s - s.mean()) / s.std()
    x = np.stack([s[i:i + window] for i in range(len(s) - window)])[..., None]
    return x, s[window:, None]


def forecaster_case(*, quick: bool, notes: list, one_core: bool = True) -> dict:
    """The rows on all cores and, with `one_core` on a machine of several, again pinned to one
    core (its result under "one_core"); each in a child process."""
    try:
        import statsmodels  # noqa: F401
    except ImportError as err:
        notes.append(f"forecaster rows skipped ({err}; pip install statsmodels)")
        return {"case": "forecaster", "rows": []}
    result = _child(quick, core=None)
    if one_core and result["rows"] and strategies.available_cores() > 1:
        result["one_core"] = _child(quick, core=min(os.sched_getaffinity(0)))
    return result


def _child(quick: bool, core: int | None) -> dict:
    """`_rows` in a fresh interpreter (JAX's default configuration), pinned to `core` if given."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "forecaster.json"
        argv = [__file__, "--json", str(out), *(["--quick"] if quick else [])]
        # the child pins itself before JAX starts a thread: every thread it makes inherits
        pin = "" if core is None else f"os.sched_setaffinity(0, {{{core}}}); "
        start = (f"import os, runpy, sys; {pin}"
                 f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
        env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
        subprocess.run([sys.executable, "-c", start], check=True, env=env)
        return json.loads(out.read_text())


def _rows(*, quick: bool) -> dict:
    x, y = series_windows()  # forecaster_case checked that statsmodels imports
    model = js.Sequential([js.LSTM(32), js.Dense(1)])
    seeds = 2 if quick else 10
    rows = []
    for name, row in ROWS.items():
        epochs = 3 if quick else row["epochs"]

        def callbacks(row=row):
            p = row["patience"]
            return [js.EarlyStopping(patience=p, restore_best_weights=True)] if p else []

        kw = dict(epochs=epochs, batch_size=32, validation_split=row["validation_split"],
                  verbose=0)

        def loop(kw=kw, callbacks=callbacks):
            return [js.fit(model, x, y, seed=s, callbacks=callbacks(), **kw)[0].params
                    for s in range(seeds)]

        runs = {"loop of fits": loop}
        for strategy in ("vmap", "concurrent", "auto"):
            runs[strategy] = (lambda s=strategy, kw=kw, callbacks=callbacks: js.fit_replicas(
                model, x, y, seeds=seeds, callbacks=callbacks(), strategy=s, **kw)[0].params)
        if row["patience"]:  # without early stopping every run is one chunk
            runs["vmap, one chunk"] = (lambda kw=kw, callbacks=callbacks: js.fit_replicas(
                model, x, y, seeds=seeds, callbacks=callbacks(), strategy="vmap",
                epochs_per_chunk=kw["epochs"], **kw)[0].params)
        warm = {k: [] for k in runs}
        for run in runs.values():  # compile
            jax.block_until_ready(run())
        for _ in range(1 if quick else 3):
            for k, run in runs.items():
                t0 = time.perf_counter()
                jax.block_until_ready(run())
                warm[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in warm.items()}
        stopped = [len(js.fit(model, x, y, seed=s, callbacks=callbacks(), **kw)[1].loss)
                   for s in range(seeds)]
        rows.append({"name": name, "seeds": seeds, "epochs": epochs, "epochs_run": stopped,
                     "warm_s": warm, "median_s": med,
                     "loop_over": {k: med["loop of fits"] / v for k, v in med.items()},
                     "auto_picks": _auto(model, x, y, kw, callbacks(), seeds)})
    return {"case": "forecaster", "cores": strategies.available_cores(),
            "loadavg_before": list(os.getloadavg()), "rows": rows}


def _auto(model, x, y, kw, callbacks, seeds) -> str:
    """What strategy="auto" runs for these arguments (fit_replicas' own parse)."""
    from jaxseq.training.parse import parse_data, parse_host, parse_optimizer, parse_program
    from jaxseq.training.spec import Layout

    layout = Layout(tuple(range(seeds)))
    host = parse_host("fit_replicas", epochs=kw["epochs"], verbose=0, callbacks=callbacks,
                      epochs_per_chunk=None, on_nan="stop", checkpoint_dir=None,
                      checkpoint_every=None, keep=3, resume=False)
    data = parse_data("fit_replicas", model, x, y, validation_split=kw["validation_split"])
    program = parse_program("fit_replicas", model, parse_optimizer("fit_replicas", model, None,
                                                                   None),
                            data, layout, loss="mse", metrics=(), batch_size=32, shuffle=True,
                            validation_batch_size=None, reset_states=None, mesh=None)
    return strategies.resolve("auto", program, layout, host, data)


def table(result: dict) -> str:
    lines = [f"forecaster (elec_equip, LSTM(32), 24-step windows, batch 32; "
             f"{result.get('cores')} cores): warm median s, loop / strategy",
             f"  {'row':<16}{'loop':>9}{'vmap':>14}{'concurrent':>16}{'auto':>14}"
             f"{'one chunk':>14}  auto picks"]
    for r in result["rows"]:
        med, ratio = r["median_s"], r["loop_over"]
        cells = "".join(f"{med[k]:>8.2f} {ratio[k]:>5.2f}" if k in med else f"{'':>14}"
                        for k in ("vmap", "concurrent", "auto", "vmap, one chunk"))
        lines.append(f"  {r['name']:<16}{med['loop of fits']:>9.2f}{cells}  {r['auto_picks']}")
    return "\n".join(lines)


if __name__ == "__main__":  # the pinned child of forecaster_case
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = _rows(quick=args.quick)
    args.json.write_text(json.dumps(result))
    print(table(result), flush=True)
