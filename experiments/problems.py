"""Problem suite: LSTM, GRU, SimpleRNN, MinGRU and MinLSTM on four sequence problems, over seeds.

Each (problem, length, cell) trains a small model (16 units + a Dense head) on the problem's
training split for every seed at once (`jaxseq.fit_replicas`: one compiled program,
`jax.vmap` over seeds), then scores each replica on the test split as skill against the
problem's trivial baseline: skill = 1 - MSE / baseline MSE (1 = perfect, 0 = no better than
the baseline, < 0 = worse). MinGRU / MinLSTM run their default mode ("auto": the sequential
loop on CPU). Problems (`jaxseq.problems`), the short and the long length (`--long` adds 200
input steps for each; copy: 3 symbols + 197 blanks):

  echo     echo(length, lag=3): output the input 3 steps later       t = 10, 30
  adding   adding_problem(length): sum of the 2 marked values       t = 10, 30
  copy     copy_task(3 symbols, delay), alphabet 4                  t = 3+3, 3+12
  sine     sine_forecast(n_in=length): next value of noisy sines    t = 10, 30

Command (from the repository root; about 4 minutes on 2 CPU cores, 8 with `--long`):

  pip install -e ".[experiments]" && python experiments/problems.py --long

Expected (3 seeds, 40 epochs, 500 training samples, adam(5e-3)): every classic cell solves the
echo (skill > 0.99) at every length and the short copy task (> 0.95), one layer of MinGRU /
MinLSTM does not (gates that see only x_t: ~0 to 0.3); on the adding problem LSTM
and GRU stay near 0.95-0.99 at t=30 while SimpleRNN drops from ~0.8 (t=10) to ~0.3 with a
large spread over seeds; the long copy task (delay 12) is only partly learned in this budget
(~0.4-0.7), at 200 steps only the GRU learns adding; the sine forecast beats persistence by
~0.1-0.45. The table we got is in README.md
("Which cell learns what"; its picture is docs/problems.png, a copy of a run's
results/problems.png). Writes results/problems.json and results/problems.png (`--out` to
change the folder).

After the table, each row's best cell is compared with the runner-up by
`js.evaluation.compare` (difference in mean skill, bootstrap interval, Welch's t): a winner is
named only where the interval excludes 0 and the test's p < 0.05 (needs scipy, in the
`[experiments]` extra).

`--quick` is a tiny end-to-end run for the tests: LSTM only (`--cells` to change), one length,
48 samples, 2 epochs, 2 seeds. `--problems` and `--cells` pick a subset.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax

import jaxseq as js
from jaxseq import evaluation, problems

CELLS = {"LSTM": js.LSTM, "GRU": js.GRU, "SimpleRNN": js.SimpleRNN, "MinGRU": js.MinGRU,
         "MinLSTM": js.MinLSTM}
UNITS = 16
OPTIMIZER = optax.adam(5e-3)  # one object: programs are compiled once per model and shape

# problem -> (Split builder taking (length, n_train, n_test, seed), head, (short, long))
# head: "sequence" = LSTM(return_sequences) + TimeDistributed(Dense); "last" = LSTM + Dense.
PROBLEMS: dict[str, tuple[Callable[..., problems.Split], str, tuple[int, int]]] = {
    "echo": (lambda t, **kw: problems.echo(t, lag=3, **kw), "sequence", (10, 30)),
    "adding": (lambda t, **kw: problems.adding_problem(t, **kw), "last", (10, 30)),
    "copy": (lambda d, **kw: problems.copy_task(3, d, alphabet=4, **kw), "sequence", (3, 12)),
    "sine": (lambda t, **kw: problems.sine_forecast(max(100, 2 * t), t, **kw), "last",
             (10, 30)),
}
# `--long`: one more length per problem, 200 input steps (copy: 3 symbols + 197 blanks)
LONG = {"echo": 200, "adding": 200, "copy": 197, "sine": 200}
FULL = dict(n_train=500, n_test=200, epochs=40, batch_size=32, seeds=3)
QUICK = dict(n_train=48, n_test=16, epochs=2, batch_size=16, seeds=2)


def build(cell: str, head: str, out_features: int) -> js.Sequential:
    layer = CELLS[cell](UNITS, return_sequences=head == "sequence")
    dense = nn.Dense(out_features)
    return js.Sequential((layer, js.TimeDistributed(dense) if head == "sequence" else dense))


def train(model, split: problems.Split, *, seeds: list[int], epochs: int, batch_size: int
          ) -> np.ndarray:
    """Test MSE of one replica per seed (all seeds in one `fit_replicas` program)."""
    kw = dict(epochs=epochs, batch_size=batch_size, optimizer=OPTIMIZER)
    states, _ = js.fit_replicas(model, split.x_train, split.y_train, seeds=seeds, **kw)
    return evaluation.replicas.scores(model, states.params, split.x_test, split.y_test)["mse"]


def run(settings: dict, lengths: tuple[int, ...] | None = None, cells=tuple(CELLS),
        names=tuple(PROBLEMS), log=print, long: bool = False) -> list[dict]:
    results = []
    seeds = list(range(settings["seeds"]))
    for name in names:
        make, head, default_lengths = PROBLEMS[name]
        for length in (*(lengths or default_lengths), *((LONG[name],) if long else ())):
            split = make(length, n_train=settings["n_train"], n_test=settings["n_test"], seed=0)
            for cell in cells:
                model = build(cell, head, split.y_train.shape[-1])
                t0 = time.perf_counter()
                mse = train(model, split, seeds=seeds, epochs=settings["epochs"],
                            batch_size=settings["batch_size"])
                skill = 1.0 - mse / split.baseline_mse
                r = {
                    "problem": name, "length": int(length), "time_steps":
                    int(split.x_train.shape[1]), "cell": cell, "seeds": seeds,
                    "baseline": split.baseline, "baseline_mse": split.baseline_mse,
                    "mse": mse.tolist(), "skill": skill.tolist(),
                    "skill_mean": float(np.mean(skill)),
                    "skill_std": float(np.std(skill, ddof=1)) if len(seeds) > 1 else 0.0,
                    "seconds": time.perf_counter() - t0,
                }
                results.append(r)
                log(f"{name:<7} t={r['time_steps']:<3} {cell:<9} skill "
                    f"{r['skill_mean']:+.3f} ± {r['skill_std']:.3f}  ({r['seconds']:.1f} s)")
    return results


def table(results: list[dict]) -> str:
    """A Markdown table: one row per (problem, length), one column per cell."""
    cells = list(dict.fromkeys(r["cell"] for r in results))
    lines = ["| problem | t | baseline MSE | " + " | ".join(cells) + " |",
             "|---|---:|---:|" + "---:|" * len(cells)]
    rows: dict[tuple, dict] = {}
    for r in results:
        rows.setdefault((r["problem"], r["time_steps"], r["baseline_mse"]), {})[r["cell"]] = r
    for (problem, t, base), by_cell in rows.items():
        vals = [f"{by_cell[c]['skill_mean']:.3f} ± {by_cell[c]['skill_std']:.3f}"
                if c in by_cell else "-" for c in cells]
        lines.append(f"| {problem} | {t} | {base:.4f} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def winners(results: list[dict]) -> list[dict]:
    """Per (problem, length): the cell with the best mean skill against the runner-up, by
    `js.evaluation.compare` (Welch's t, bootstrap interval of the difference in skill; the
    verdict claims a winner only where the interval excludes 0)."""
    out = []
    rows: dict[tuple, list[dict]] = {}
    for r in results:
        rows.setdefault((r["problem"], r["time_steps"]), []).append(r)
    for (problem, t), rs in rows.items():
        rs = sorted((r for r in rs if np.isfinite(r["skill"]).all()),
                    key=lambda r: -r["skill_mean"])
        if len(rs) < 2 or len(rs[0]["skill"]) < 2:
            continue
        c = evaluation.compare(rs[0]["skill"], rs[1]["skill"], lower_is_better=False)
        out.append({"problem": problem, "time_steps": t, "a": rs[0]["cell"],
                    "b": rs[1]["cell"], **{k: c[k] for k in ("diff", "ci95", "p_value",
                                                             "effect_size", "verdict")}})
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["problem"] for r in results))
    cells = list(dict.fromkeys(r["cell"] for r in results))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False)
    width = 0.8 / len(cells)
    for ax, name in zip(axes[0], names, strict=True):
        rs = [r for r in results if r["problem"] == name]
        ts = sorted({r["time_steps"] for r in rs})
        for i, cell in enumerate(cells):
            pts = [next((r for r in rs if r["cell"] == cell and r["time_steps"] == t), None)
                   for t in ts]
            xs = np.arange(len(ts)) + (i - (len(cells) - 1) / 2) * width
            ax.bar(xs, [p["skill_mean"] if p else np.nan for p in pts], width,
                   yerr=[p["skill_std"] if p else 0 for p in pts], label=cell, capsize=2)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(range(len(ts)), [f"t={t}" for t in ts])
        ax.set_ylim(min(-0.2, ax.get_ylim()[0]), 1.05)
        ax.set_title(name)
    axes[0][0].set_ylabel("skill = 1 - MSE / baseline MSE")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny end-to-end run (for the tests)")
    p.add_argument("--seeds", type=int, default=None, help=f"default {FULL['seeds']}")
    p.add_argument("--epochs", type=int, default=None, help=f"default {FULL['epochs']}")
    p.add_argument("--cells", nargs="+", choices=list(CELLS), default=None,
                   help="default: all (LSTM only with --quick)")
    p.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    p.add_argument("--long", action="store_true",
                   help="also one long length per problem (200 input steps)")
    p.add_argument("--out", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("seeds", "epochs"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    t0 = time.perf_counter()
    cells = args.cells or (["LSTM"] if args.quick else list(CELLS))
    results = run(settings, lengths=(4,) if args.quick else None, cells=tuple(cells),
                  names=tuple(args.problems), long=args.long)
    print()
    print(table(results))
    wins = winners(results)
    if wins:
        print("\nBest cell against the runner-up (A vs B, skill, higher is better):")
        for w in wins:
            print(f"  {w['problem']} t={w['time_steps']}: A = {w['a']}, B = {w['b']}: "
                  f"{w['verdict']}")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "units": UNITS, "optimizer": "adam(5e-3)",
               "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
               "wall_s": time.perf_counter() - t0, "results": results, "winners": wins}
    (args.out / "problems.json").write_text(json.dumps(payload, indent=1))
    plot(results, args.out / "problems.png")
    print(f"wrote {args.out / 'problems.json'} and {args.out / 'problems.png'} "
          f"in {payload['wall_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
