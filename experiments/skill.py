"""Skill over seeds: N replicas of each tutorial framing, trained at once, as a distribution.

One training run of a small LSTM says little: whether it learns depends on the seed. This trains
N replicas (default 30) per framing in ONE compiled program (`jaxseq.fit_replicas`,
`jax.vmap` over the seeds), scores each replica on the echo (RMSE), and reports mean ± std,
median, worst, the fraction of replicas that learned the echo (every prediction within 0.05 of
its target; 0.1 for many-to-many), and the wall time. It then trains the same N replicas one
after another with `fit` and prints the speed-up.

Command (from the repository root):

  pip install -e ".[experiments]" && python experiments/skill.py

Expect all or nearly all replicas to learn many-to-one (RMSE ~1e-6), most to learn one-to-one
(RMSE ~1e-2), and many-to-many to be the most seed-dependent; the replicas run several times
faster than the same fits one by one. Then, for "how many repeats are enough?", the mean RMSE
of the first n seeds with its standard error and bootstrap interval (`repeats_curve`) for
n = 1..N. Writes results/skill.json, skill.png, repeats.json and repeats.png.

Speed: `--unroll` runs the LSTM's 5 steps unrolled on the scan path, and `--cpu-devices N`
splits the CPU into N JAX devices (one per core) and shards the replicas over them; together
they measured about 3x faster on 2 cores (README, Performance).

Devices: with `--mesh` (or automatically under `jax.distributed`, more than one process), the
replica axis is sharded over every device of every process; N is rounded up to a multiple of
the device count. Multi-host: run the same command on each host with
`--coordinator HOST:PORT --num-processes P --process-id I` (see README).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import jaxseq as js
from jaxseq import evaluation, parallel

# framing -> (model builder, epochs, batch size, tolerance for "learned")
FRAMINGS = {
    "one_to_one": (lambda n, **kw: js.models.one_to_one(**kw), 1000, 5, 0.05),
    "many_to_one": (lambda n, **kw: js.models.many_to_one(n, **kw), 500, 1, 0.05),
    "many_to_many": (lambda n, **kw: js.models.many_to_many(**kw), 1000, 1, 0.1),
}


def run_framing(framing: str, *, n_replicas: int, length: int, epochs: int | None, mesh,
                sequential: bool, lstm: dict | None = None) -> dict:
    build, default_epochs, batch_size, tol = FRAMINGS[framing]
    epochs = epochs or default_epochs
    x, y = js.problems.frame(js.problems.echo_sequence(length), framing)
    model = build(length, **(lstm or {}))
    seeds = list(range(n_replicas))
    kw = dict(epochs=epochs, batch_size=batch_size)

    t0 = time.perf_counter()
    states, history = js.fit_replicas(model, x, y, seeds=seeds, mesh=mesh, **kw)
    params = parallel.to_host(states.params)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    states2, _ = js.fit_replicas(model, x, y, seeds=seeds, mesh=mesh, **kw)
    jax.block_until_ready(states2.params)
    warm = time.perf_counter() - t0

    sk = evaluation.replicas.skill(model, params, x, y, history=history)
    rmse, summary = sk["rmse"]
    preds = np.stack([np.asarray(js.predict(model, jax.tree.map(lambda a, i=i: a[i], params), x))
                      for i in range(len(seeds))])
    max_err = np.max(np.abs(preds - np.asarray(y)[None]).reshape(len(seeds), -1), axis=1)
    learned = np.isfinite(max_err) & (max_err <= tol)

    seq_time = None
    if sequential:
        js.fit(model, x, y, seed=0, verbose=0, **kw)  # compile once, outside the clock
        t0 = time.perf_counter()
        for s in seeds:
            st, _ = js.fit(model, x, y, seed=s, verbose=0, **kw)
        jax.block_until_ready(st.params)
        seq_time = time.perf_counter() - t0

    return {
        "framing": framing, "replicas": len(seeds), "epochs": epochs, "batch_size": batch_size,
        "rmse": rmse.tolist(), "max_abs_error": max_err.tolist(),
        "nonfinite": history.nonfinite.tolist(),
        "summary": {k: v for k, v in summary.__dict__.items()},
        "learned_fraction": float(learned.mean()), "tolerance": tol,
        "final_loss": history.loss[:, -1].tolist(),
        "wall_s_with_compile": cold, "wall_s_replicas": warm, "wall_s_sequential": seq_time,
        "speedup": (seq_time / warm) if seq_time else None,
    }


def table(results: list[dict]) -> str:
    head = (f"{'framing':<13} {'N':>3} {'RMSE mean ± std':>22} {'median':>9} {'worst':>9} "
            f"{'learned':>8} {'replicas':>9} {'one by one':>11} {'speed-up':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        s = r["summary"]
        seq = f"{r['wall_s_sequential']:.2f} s" if r["wall_s_sequential"] else "-"
        sp = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        lines.append(
            f"{r['framing']:<13} {r['replicas']:>3} {s['mean']:>10.2e} ± {s['std']:<9.2e} "
            f"{s['median']:>9.2e} {s['max']:>9.2e} {r['learned_fraction']:>8.0%} "
            f"{r['wall_s_replicas']:>7.2f} s {seq:>11} {sp:>9}"
        )
        if s["n_nonfinite"]:
            lines.append(f"  ({s['n_nonfinite']} replica(s) went non-finite; left out above)")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    data = [np.asarray(r["rmse"]) for r in results]
    ax.boxplot(data, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.plot(i + rng.uniform(-0.12, 0.12, d.size), d, "o", alpha=0.5, ms=4)
    ax.set_xticks(range(1, len(results) + 1), [r["framing"] for r in results])
    ax.set_yscale("log")
    ax.set_ylabel("RMSE on the echo (one point per replica)")
    ax.set_title(f"Skill over {results[0]['replicas']} seeds per framing")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def repeats(results: list[dict]) -> dict[str, dict]:
    """`js.evaluation.repeats_curve` of each framing's RMSE (finite replicas, in seed order):
    how the mean and its uncertainty settle as repeats accumulate."""
    out = {}
    for r in results:
        v = np.asarray(r["rmse"], np.float64)
        out[r["framing"]] = {k: a.tolist() for k, a in
                             evaluation.repeats_curve(v[np.isfinite(v)]).items()}
    return out


def repeats_table(curves: dict[str, dict]) -> str:
    lines = [f"{'framing':<13} {'n':>4} {'mean RMSE':>10} {'SEM':>9} {'95% CI of the mean':>24} "
             f"{'CI width / mean':>15}"]
    for framing, c in curves.items():
        size = len(c["n"])
        for n in sorted({k for k in (5, 10, 30, 100, size) if k <= size}):
            i = n - 1
            width = (c["ci_high"][i] - c["ci_low"][i]) / c["mean"][i]
            lines.append(f"{framing:<13} {n:>4} {c['mean'][i]:>10.3e} {c['sem'][i]:>9.2e} "
                         f"[{c['ci_low'][i]:.3e}, {c['ci_high'][i]:.3e}] {width:>15.0%}")
    return "\n".join(lines)


def plot_repeats(curves: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.4), squeeze=False)
    for ax, (framing, c) in zip(axes[0], curves.items(), strict=True):
        n, mean = np.asarray(c["n"]), np.asarray(c["mean"])
        ax.fill_between(n, c["ci_low"], c["ci_high"], alpha=0.3, label="95% bootstrap CI")
        sem = np.nan_to_num(np.asarray(c["sem"]))
        ax.plot(n, mean, label="mean of the first n")
        ax.plot(n, mean + sem, "k:", lw=0.8, label="± 1 SEM")
        ax.plot(n, mean - sem, "k:", lw=0.8)
        ax.set_title(framing)
        ax.set_xlabel("repeats (seeds)")
    axes[0][0].set_ylabel("RMSE on the echo")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=30)
    p.add_argument("--framing", choices=[*FRAMINGS, "all"], default="all")
    p.add_argument("--length", type=int, default=5)
    p.add_argument("--epochs", type=int, default=None, help="override the tutorial's epochs")
    p.add_argument("--mesh", action="store_true", help="shard replicas over all devices")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="split the CPU into N JAX devices (e.g. one per core) and shard the "
                        "replicas over them")
    p.add_argument("--unroll", action="store_true",
                   help="LSTM(implementation='scan', unroll=True): faster for many replicas "
                        "of these 5-step models, slower to compile")
    p.add_argument("--no-sequential", action="store_true", help="skip the one-by-one timing")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-host)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    args = p.parse_args(argv)
    if args.cpu_devices is not None:
        try:
            parallel.use_cpu_devices(args.cpu_devices)
        except (ValueError, RuntimeError) as err:
            p.error(f"--cpu-devices: {err}")
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    mesh = None
    n = args.replicas
    if args.cpu_devices is not None:  # the CPU's devices, even where a GPU is the default
        mesh = parallel.make_mesh(jax.devices("cpu"))
        n = -(-n // mesh.size) * mesh.size
    elif args.mesh or jax.process_count() > 1:
        mesh = parallel.make_mesh()
        n = -(-n // mesh.size) * mesh.size
    main_process = jax.process_index() == 0
    framings = list(FRAMINGS) if args.framing == "all" else [args.framing]
    results = []
    for framing in framings:
        r = run_framing(framing, n_replicas=n, length=args.length, epochs=args.epochs,
                        mesh=mesh, sequential=not args.no_sequential,
                        lstm=dict(implementation="scan", unroll=True) if args.unroll else None)
        results.append(r)
        if main_process:
            print(f"{framing}: {r['replicas']} replicas in {r['wall_s_replicas']:.2f} s "
                  f"({r['wall_s_with_compile']:.1f} s with compilation)", flush=True)
    if main_process:
        print()
        print(table(results))
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"devices": [str(d) for d in jax.devices()], "processes": jax.process_count(),
                   "jax": jax.__version__, "results": results}
        (args.out / "skill.json").write_text(json.dumps(payload, indent=1))
        plot(results, args.out / "skill.png")
        curves = repeats(results)
        print("\nHow many repeats? The mean RMSE of the first n seeds and its uncertainty:")
        print(repeats_table(curves))
        (args.out / "repeats.json").write_text(json.dumps(curves))
        plot_repeats(curves, args.out / "repeats.png")
        print(f"wrote {args.out / 'skill.json'}, {args.out / 'skill.png'} and "
              f"{args.out / 'repeats.png'}")
    return results


if __name__ == "__main__":
    main()
