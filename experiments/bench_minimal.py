"""Speed of MinGRU / MinLSTM: parallel (associative scan) vs sequential (lax.scan), vs js.GRU.

Each contender: forward over (batch, time, features) with return_sequences=True, loss = mean
of the outputs, gradients w.r.t. params and inputs (fwd+bwd), jitted, float32. Build all,
time the first call (trace + compile), warm up, then `--repeats` rounds in which every
contender runs once in turn (interleaved, so a load spike hits all alike); print medians.

Command (from the repository root):

  python experiments/bench_minimal.py                        # 32x{100,1000}x32x128, 7 rounds
  python experiments/bench_minimal.py --sizes 32x100x32x128 --repeats 11

Sizes are BxTxFxU (batch, time, features, units). Expect on a 2-core CPU VM: the sequential
lax.scan 2-5x faster than the associative scan at T=100 and T=1000, with a first call 5-15x
shorter; MinGRU sequential 0.4-0.7x the time of js.GRU (README, "minGRU and minLSTM", has a
measured table). Other load on the machine moves timings by 10-30%: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxseq as js


def contenders(units: int) -> dict:
    seq = dict(return_sequences=True)
    return {
        "MinGRU parallel log": js.MinGRU(units, mode="parallel", **seq),
        "MinGRU sequential log": js.MinGRU(units, mode="sequential", **seq),
        "MinGRU parallel plain": js.MinGRU(units, mode="parallel", log_space=False, **seq),
        "MinGRU sequential plain": js.MinGRU(units, mode="sequential", log_space=False, **seq),
        "MinLSTM parallel log": js.MinLSTM(units, mode="parallel", **seq),
        "MinLSTM sequential log": js.MinLSTM(units, mode="sequential", **seq),
        "GRU (jaxseq default)": js.GRU(units, **seq),
    }


def fwd_bwd(layer):
    def loss(params, x):
        return jnp.mean(layer.apply({"params": params}, x))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def run(size: str, repeats: int) -> None:
    b, t, f, u = (int(v) for v in size.split("x"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, t, f)), jnp.float32)
    fns, params, compile_s = {}, {}, {}
    for name, layer in contenders(u).items():
        params[name] = layer.init(jax.random.key(0), x[:, :2])["params"]
        fns[name] = fwd_bwd(layer)
        start = time.perf_counter()
        jax.block_until_ready(fns[name](params[name], x))
        compile_s[name] = time.perf_counter() - start
        jax.block_until_ready(fns[name](params[name], x))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(params[name], x))
            samples[name].append(time.perf_counter() - start)
    print(f"\n{size} (BxTxFxU), fwd+bwd, median of {repeats}, load {os.getloadavg()[0]:.1f}")
    base = np.median(samples["GRU (jaxseq default)"])
    for name, s in samples.items():
        med = np.median(s)
        print(f"  {name:26s} {med * 1e3:9.2f} ms  ({med / base:4.2f}x GRU)  "
              f"first call {compile_s[name]:5.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="32x100x32x128,32x1000x32x128")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for size in args.sizes.split(","):
        run(size, args.repeats)


if __name__ == "__main__":
    main()
