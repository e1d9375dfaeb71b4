"""Speed benchmarks: jaxseq's recurrent layers and training against their peers, JSON out.

Cases (all by default; pick with --cases):
  lstm, gru          fwd+bwd: forward, loss = mean of the outputs, gradients w.r.t. params and
                     inputs; sizes BxTxIxH (batch, time, input features, units), float32
  lstm_fwd, gru_fwd  forward only, same sizes
  tutorial           the TimeDistributed tutorial (echo of [0.0, 0.2, ..., 0.8], three
                     framings): jaxseq.fit per epoch (warm) and the whole run from cold
                     (compilation included); Keras 3 model.fit (jax backend) alongside
  replicas           jaxseq.fit_replicas with 1 vs 32 seeds (many_to_many, tutorial data)
  minimal            fwd+bwd of MinGRU / MinLSTM (sequential and parallel) vs GRU / LSTM,
                     32x100x32x128 and 32x1000x32x128, with compile times
  train              training workloads, per epoch: LSTM(32) forecaster and LSTM(64) mid-size,
                     jaxseq.fit vs Keras fit vs torch eager; 16 replicas vs 16 fits
  cross_validation   5-fold x 10-seed cross_validate (one program) vs 50 fit + evaluate calls
  compile            first-call time (trace + lower + compile) of the jitted LSTM fwd+bwd at
                     T=10 and T=1000
  remat              LSTM(64) fwd+bwd, batch 8, 8 features, with and without `remat=True`
                     (both implementations): temp memory of the compiled gradient program at
                     T=500/1000/2000/4000, and the time at T=4000
Peers in the same process: Flax nn.RNN(OptimizedLSTMCell / GRUCell) always; torch.nn.LSTM/GRU
(batch_first, torch's default threads) and Keras 3 when installed (else their rows are skipped,
with a note). jaxseq runs its default implementation ("auto": the fused path) and, as "jaxseq
[scan]", the lax.scan reference path.

Method: build every contender of a case, warm up (2 calls), then `--repeats` rounds in which
every contender runs once, in turn (interleaved, so that a load spike hits all of them alike);
report the median. Inputs are random normal, never zeros; JAX results are block_until_ready'd
and torch synchronized before the clock is read. The table prints medians, the ratio to the
case's first peer (torch when installed, else Flax), and GFLOP/s (8·B·T·H·(I+H) FLOPs forward
for the LSTM, 6·… for the GRU, backward twice the forward); a large float32 matmul is measured
as the peak. results/bench.json records the machine, device, versions, load average and every
sample. Runs unchanged on GPU/TPU (torch moves to CUDA when JAX runs on a GPU).

Command (from the repository root, after `pip install -e ".[experiments,interop]"`):

  python experiments/bench.py                    # everything, ~12 min on 2 CPU cores
  python experiments/bench.py --cases lstm,gru --sizes 64x100x128x128 --repeats 7
  python experiments/bench.py --quick --out /tmp/bench   # tiny sizes: a smoke test

Expect (2-core AMD EPYC VM, float32; the measured tables are in README.md (Performance)):
jaxseq's LSTM fwd+bwd about 0.9x torch's oneDNN kernel at 64x100x128x128, 1.05x at
64x100x256x256 and 1.2x at 32x200x512x512, 0.65-0.8x Flax and 0.7-0.8x "jaxseq [scan]"; GRU
0.65-1.0x torch; forward only 1.0-1.4x torch; jaxseq.fit ~15 us/epoch on the tutorial against
Keras' ~1.9 ms; compile time flat in T (the loop is not unrolled); minimal: MinGRU's sequential
loop ~4x faster than the GRU at T=100, ~2.4x at T=1000, the associative scan slower than the
GRU on CPU; train: the LSTM(32) forecaster ~3.3 ms/epoch (Keras ~2.3x, torch eager ~5.5x that),
~3x its compute bound; cross_validation: ~2-3x faster than the loop of fits on one device, ~7x
with `--cpu-devices 2`. Timings move by 10-30% with other load on the machine: compare ratios
within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")  # before anything imports keras

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxseq as js  # noqa: E402
from jaxseq import parallel  # noqa: E402

DEFAULT_SIZES = "64x100x128x128,64x100x256x256,32x200x512x512"
QUICK_SIZES = "4x6x3x5"
ALL_CASES = ("lstm", "gru", "lstm_fwd", "gru_fwd", "minimal", "tutorial", "train", "replicas",
             "forecaster", "cross_validation",
             "compile", "remat")
TUTORIAL = {"one_to_one": (1000, 5), "many_to_one": (500, 1), "many_to_many": (1000, 1)}
GATES = {"lstm": 4, "gru": 3}


# ---------------------------------------------------------------------------------------------
# Environment


def _optional(name: str):
    try:
        return __import__(name)
    except Exception as err:  # ImportError, or a broken install: skip its rows, say why
        return f"{type(err).__name__}: {err}"


torch = None  # imported by main(): `python bench.py --help` and the tests stay light
HAVE_TORCH = False


def _import_torch() -> None:
    global torch, HAVE_TORCH
    torch = _optional("torch")
    HAVE_TORCH = not isinstance(torch, str)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def environment() -> dict:
    versions = {"python": platform.python_version(), "jax": jax.__version__,
                "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
                "flax": __import__("flax").__version__, "numpy": np.__version__,
                "jaxseq": js.__version__}
    for name in ("optax", "torch", "keras"):
        mod = _optional(name)
        versions[name] = mod if isinstance(mod, str) else getattr(mod, "__version__", "?")
    return {
        "machine": {"cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "device": {"backend": jax.default_backend(), "kind": jax.devices()[0].device_kind,
                   "count": jax.device_count()},
        "torch_device": _torch_device() if HAVE_TORCH else None,
        "torch_threads": torch.get_num_threads() if HAVE_TORCH else None,
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jaxseq_optimization_level": js.training.optimization_level(),
    }


def _torch_device() -> str:
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _torch_sync() -> None:
    if _torch_device() == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# Timing


def measure(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict:
    """Interleaved timing: each round runs every contender once. -> {name: [seconds, ...]}."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            samples[name].append(time.perf_counter() - t0)
    return samples


def parse_sizes(text: str) -> list[tuple[int, int, int, int]]:
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"--sizes expects BxTxIxH items separated by commas, e.g. 64x100x128x128; "
                f"got {item!r}."
            )
        sizes.append(tuple(int(p) for p in parts))
    return sizes


def matmul_peak(quick: bool) -> dict:
    """The reference peak: the best median GFLOP/s of large float32 matmuls (m, k, n) on the
    default JAX device."""
    shapes = [(256, 256, 256)] if quick else [(2048, 2048, 2048), (4096, 1024, 1024)]
    f = jax.jit(jnp.matmul)
    fns, flops = {}, {}
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        name = f"{m}x{k}x{n}"
        fns[name] = lambda a=a, b=b: f(a, b).block_until_ready()
        flops[name] = 2 * m * k * n
    samples = measure(fns, 3 if quick else 7, warmup=3)
    gflops = {k: flops[k] / statistics.median(v) / 1e9 for k, v in samples.items()}
    return {"samples_s": samples, "gflops_by_shape": gflops, "gflops": max(gflops.values())}


# ---------------------------------------------------------------------------------------------
# Layer cases: fwd+bwd and forward only


def _jax_case(module: nn.Module, x, *, backward: bool, stats: dict, name: str):
    params = jax.jit(module.init)(jax.random.key(0), x)

    def loss(params, x):
        out = module.apply(params, x)
        return jnp.mean(out)

    fn = jax.grad(loss, argnums=(0, 1)) if backward else loss
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(params, x).compile()
    mem = compiled.memory_analysis()
    stats[name] = {"compile_s": time.perf_counter() - t0,
                   "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0) or 0)}
    return lambda: jax.block_until_ready(compiled(params, x))


def _torch_case(kind: str, x_np, hidden: int, *, backward: bool):
    dev = _torch_device()
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
    layer = cls(x_np.shape[-1], hidden, batch_first=True).to(dev)
    x = torch.tensor(x_np, device=dev, requires_grad=backward)

    def fwd_bwd():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = layer(x)
        y.mean().backward()
        _torch_sync()

    def fwd():
        with torch.no_grad():
            y, _ = layer(x)
            y.mean().item()
        _torch_sync()

    return fwd_bwd if backward else fwd


def layer_case(kind: str, size, *, backward: bool, repeats: int, notes: list,
               with_scan: bool = True) -> dict:
    b, t, i, h = size
    x_np = np.random.default_rng(0).standard_normal((b, t, i)).astype(np.float32)
    x = jnp.asarray(x_np)
    fns, stats = {}, {}
    if HAVE_TORCH:
        fns["torch"] = _torch_case(kind, x_np, h, backward=backward)
    cell = nn.OptimizedLSTMCell(h) if kind == "lstm" else nn.GRUCell(h)
    fns["flax"] = _jax_case(nn.RNN(cell), x, backward=backward, stats=stats, name="flax")
    layer_cls = js.LSTM if kind == "lstm" else js.GRU
    impls = (("auto", "jaxseq"), ("scan", "jaxseq [scan]")) if with_scan else (("auto", "jaxseq"),)
    for impl, name in impls:
        layer = layer_cls(h, return_sequences=True, implementation=impl)
        fns[name] = _jax_case(layer, x, backward=backward, stats=stats, name=name)
    if not HAVE_TORCH and not any("torch" in n for n in notes):
        notes.append(f"torch rows skipped ({torch})")
    samples = measure(fns, repeats)
    flops = 2 * GATES[kind] * b * t * h * (i + h) * (3 if backward else 1)
    return {"case": f"{kind}{'' if backward else '_fwd'}", "size": list(size),
            "flops": flops, "samples_s": samples, "jax_stats": stats}


# ---------------------------------------------------------------------------------------------
# Tutorial: jaxseq.fit vs Keras model.fit; replicas; compile time vs T


def _tutorial_data(framing: str):
    return js.problems.frame(js.problems.echo_sequence(5), framing)


def _jaxseq_model(framing: str):
    return {"one_to_one": js.models.one_to_one, "many_to_one": lambda: js.models.many_to_one(5),
            "many_to_many": js.models.many_to_many}[framing]()


def _keras_model(keras, framing: str):
    layers = keras.layers
    if framing == "one_to_one":
        body = [keras.Input((1, 1)), layers.LSTM(5), layers.Dense(1)]
    elif framing == "many_to_one":
        body = [keras.Input((5, 1)), layers.LSTM(5), layers.Dense(5)]
    else:
        body = [keras.Input((5, 1)), layers.LSTM(5, return_sequences=True),
                layers.TimeDistributed(layers.Dense(1))]
    model = keras.Sequential(body)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    return model


def _cold_start() -> None:
    """Forget every compiled program (jaxseq's cache and JAX's), so "cold" means compiling."""
    js.training.clear_caches()
    jax.clear_caches()


def tutorial_case(*, quick: bool, keras_epochs: int | None, notes: list) -> dict:
    keras = _optional("keras")
    if isinstance(keras, str) or (not isinstance(keras, str)
                                  and keras.backend.backend() != "jax"):
        reason = keras if isinstance(keras, str) else f"backend {keras.backend.backend()}"
        notes.append(f"Keras rows skipped ({reason})")
        keras = None
    rows = []
    framings = {"many_to_many": TUTORIAL["many_to_many"]} if quick else TUTORIAL
    for framing, (epochs, batch) in framings.items():
        if quick:
            epochs = 2
        x, y = _tutorial_data(framing)
        model = _jaxseq_model(framing)
        _cold_start()
        t0 = time.perf_counter()
        state, _ = js.fit(model, x, y, epochs=epochs, batch_size=batch, verbose=0)
        jax.block_until_ready(state.params)
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(2 if quick else 3):
            t0 = time.perf_counter()
            state, _ = js.fit(model, x, y, epochs=epochs, batch_size=batch, verbose=0)
            jax.block_until_ready(state.params)
            warm.append(time.perf_counter() - t0)
        rows.append({"framing": framing, "framework": "jaxseq", "epochs": epochs,
                     "batch_size": batch, "cold_s": cold, "warm_s": warm,
                     "per_epoch_s": statistics.median(warm) / epochs})
        if keras is None:
            continue
        k_epochs = min(epochs, keras_epochs) if keras_epochs else epochs
        kmodel = _keras_model(keras, framing)
        t0 = time.perf_counter()
        kmodel.fit(x, y, epochs=k_epochs, batch_size=batch, verbose=0)
        kcold = time.perf_counter() - t0
        t0 = time.perf_counter()
        kmodel.fit(x, y, epochs=k_epochs, batch_size=batch, verbose=0)
        kwarm = time.perf_counter() - t0
        rows.append({"framing": framing, "framework": "keras", "epochs": k_epochs,
                     "batch_size": batch, "cold_s": kcold, "warm_s": [kwarm],
                     "per_epoch_s": kwarm / k_epochs})
    return {"case": "tutorial", "rows": rows}


def replicas_case(*, quick: bool, notes: list, cpu_devices: bool = False) -> dict:
    try:
        from jaxseq import fit_replicas
    except ImportError as err:
        notes.append(f"replicas rows skipped ({err})")
        return {"case": "replicas", "rows": []}
    x, y = _tutorial_data("many_to_many")
    model = js.models.many_to_many()
    # The same model with the layer's reference path, its 5 steps unrolled: slower to compile
    # and no faster alone, but faster under vmap (README, Performance).
    unrolled = js.models.many_to_many(implementation="scan", unroll=True)
    epochs = 2 if quick else 1000
    many = 2 if quick else 32
    runs = {"fit (1 seed)": lambda: js.fit(model, x, y, epochs=epochs, batch_size=1,
                                           verbose=0)[0].params}
    # Replica-parallel over the local devices (the CPU's with `--cpu-devices N`, which splits
    # a CPU into N): the largest device count that divides the replicas.
    devices = jax.local_devices(backend="cpu" if cpu_devices else None)
    d = max(k for k in range(1, len(devices) + 1) if many % k == 0)
    mesh = parallel.make_mesh(devices[:d]) if d > 1 else None
    for tag, m in (("", model), (" [scan, unrolled]", unrolled)):
        for n in (1, many):
            runs[f"fit_replicas ({n} seeds){tag}"] = (
                lambda n=n, m=m: fit_replicas(m, x, y, seeds=range(n), epochs=epochs,
                                              batch_size=1)[0].params
            )
        if mesh is not None:
            runs[f"fit_replicas ({many} seeds, {d} devices){tag}"] = (
                lambda m=m: fit_replicas(m, x, y, seeds=range(many), epochs=epochs,
                                         batch_size=1, mesh=mesh)[0].params
            )
    cold, warm = {}, {name: [] for name in runs}
    for name, run in runs.items():
        _cold_start()
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        cold[name] = time.perf_counter() - t0
    for _ in range(2 if quick else 5):  # rounds interleave the runs: load hits all alike
        for name, run in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            warm[name].append(time.perf_counter() - t0)
    rows = [{"name": name, "epochs": epochs, "cold_s": cold[name], "warm_s": warm[name]}
            for name in runs]
    return {"case": "replicas", "replicas": many, "rows": rows}


def cv_case(*, quick: bool, cpu_devices: bool = False) -> dict:
    """5-fold x 10-seed cross-validation of the many_to_many model (echo
    of 50 random sequences of 5 steps, batch 8, 1000 epochs) as one program, against 50 `fit`
    + `evaluate` calls in a loop; both cold (compilation included) and warm."""
    x = np.random.default_rng(0).random((50, 5, 1)).astype(np.float32)
    model = js.models.many_to_many()
    folds, seeds, epochs = (5, 2, 2) if quick else (5, 10, 1000)
    splits = js.evaluation.kfold(len(x), folds)
    fit_kw = dict(epochs=epochs, batch_size=8)

    def loop():
        out = []
        for tr, te in splits:
            for s in range(seeds):
                state, _ = js.fit(model, x[tr], x[tr], seed=s, verbose=0, **fit_kw)
                out.append(js.evaluate(model, state, x[te], x[te], batch_size=8))
        return np.array(out).reshape(folds, seeds)

    runs = {f"{folds * seeds} x fit + evaluate": loop,
            "cross_validate": lambda: js.evaluation.cross_validate(
                model, x, x, folds=folds, seeds=seeds, **fit_kw).scores["loss"]}
    devices = jax.local_devices(backend="cpu" if cpu_devices else None)
    d = max(k for k in range(1, len(devices) + 1) if seeds % k == 0)
    if d > 1:
        mesh = parallel.make_mesh(devices[:d])
        runs[f"cross_validate ({d} devices)"] = lambda: js.evaluation.cross_validate(
            model, x, x, folds=folds, seeds=seeds, mesh=mesh, **fit_kw).scores["loss"]
    cold, warm, scores = {}, {name: [] for name in runs}, {}
    for name, run in runs.items():
        _cold_start()
        t0 = time.perf_counter()
        scores[name] = run()
        cold[name] = time.perf_counter() - t0
    for _ in range(2):  # interleaved rounds
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            warm[name].append(time.perf_counter() - t0)
    ref = scores[next(iter(runs))]
    rows = [{"name": name, "cold_s": cold[name], "warm_s": warm[name],
             "max_rel_diff": float(np.max(np.abs(scores[name] - ref) / np.abs(ref)))}
            for name in runs]
    return {"case": "cross_validation", "folds": folds, "seeds": seeds, "epochs": epochs,
            "rows": rows}


# ---------------------------------------------------------------------------------------------
# Training workloads where users live: a forecaster and a mid-size model

MINIMAL_SIZES = [(32, 100, 32, 128), (32, 1000, 32, 128)]  # BxTxIxH

# name -> (samples, time steps, features, units, batch size)
WORKLOADS = {"forecaster": (204, 12, 1, 32, 16), "midsize": (64, 50, 8, 64, 32)}


def small_gemm_rate(b: int, k: int, n: int, quick: bool) -> float:
    """GFLOP/s of a chain of dependent (b, k) @ (k, n) products in one jitted loop (what one
    recurrent step's product can reach on XLA, per-op overhead included)."""
    steps = 50 if quick else 2000
    w = jax.random.normal(jax.random.key(0), (k, n), jnp.float32) * 0.1

    @jax.jit
    def chain(x):
        def body(_, x):
            y = x @ w
            return y[:, :k] + y[:, n - k:]
        return jax.lax.fori_loop(0, steps, body, x)

    x = jax.random.normal(jax.random.key(1), (b, k), jnp.float32)
    t = measure({"chain": lambda: chain(x).block_until_ready()}, 3 if quick else 7)["chain"]
    return 2 * b * k * n * steps / statistics.median(t) / 1e9


def epoch_flops(n: int, t: int, f: int, h: int) -> int:
    """LSTM fwd+bwd FLOPs of one epoch: per step and sample, the forward products x·W and
    h·U (2·4h·(f+h)), the backward's input/state gradients and weight gradients (twice that)."""
    return 3 * 2 * 4 * h * (f + h) * t * n


def _torch_epoch(data, h: int, bs: int):
    import torch

    x, y = (torch.from_numpy(a) for a in data)
    lstm = torch.nn.LSTM(x.shape[-1], h, batch_first=True)
    head = torch.nn.Linear(h, 1)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)

    def epoch():
        for idx in torch.randperm(len(x)).split(bs):
            opt.zero_grad()
            out, _ = lstm(x[idx])
            loss = torch.mean((head(out[:, -1]) - y[idx]) ** 2)
            loss.backward()
            opt.step()
        return loss.item()

    return epoch


def train_case(name: str, *, quick: bool, notes: list, cpu_devices: bool = False) -> dict:
    n, t, f, h, bs = WORKLOADS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, t, f)).astype(np.float32)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    model = js.Sequential((js.LSTM(h), js.layers.Dense(1)))
    epochs = 2 if quick else 100
    reps = 16
    runs = {"jaxseq": lambda e=epochs: js.fit(model, x, y, epochs=e, batch_size=bs,
                                              verbose=0)[0].params}
    keras = _optional("keras")
    if not isinstance(keras, str) and keras.backend.backend() == "jax":
        km = keras.Sequential([keras.Input((t, f)), keras.layers.LSTM(h), keras.layers.Dense(1)])
        km.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        k_epochs = 2 if quick else 10
        runs["keras"] = lambda: km.fit(x, y, epochs=k_epochs, batch_size=bs, verbose=0)
    else:
        notes.append(f"{name}: Keras row skipped")
    if HAVE_TORCH:
        t_epoch = _torch_epoch((x, y), h, bs)
        t_epochs = 2 if quick else 10
        runs["torch"] = lambda: [t_epoch() for _ in range(t_epochs)]
    else:
        notes.append(f"{name}: torch row skipped")
    r_epochs = 2 if quick else 20
    runs[f"fit_replicas ({reps} seeds)"] = lambda: js.fit_replicas(
        model, x, y, seeds=reps, epochs=r_epochs, batch_size=bs)[0].params
    devices = jax.local_devices(backend="cpu" if cpu_devices else None)
    d = max(k for k in range(1, len(devices) + 1) if reps % k == 0)
    if d > 1:
        mesh = parallel.make_mesh(devices[:d])
        runs[f"fit_replicas ({reps} seeds, {d} devices)"] = lambda: js.fit_replicas(
            model, x, y, seeds=reps, epochs=r_epochs, batch_size=bs, mesh=mesh)[0].params
    runs[f"{reps} x fit"] = lambda: [js.fit(model, x, y, epochs=r_epochs, batch_size=bs,
                                            verbose=0, seed=s)[0].params for s in range(reps)]
    per = {"jaxseq": epochs, "keras": 2 if quick else 10, "torch": 2 if quick else 10}
    per.update({k: r_epochs for k in runs if k not in per})
    samples = measure(runs, 3 if quick else 5, warmup=1)
    per_epoch = {k: [v / per[k] for v in vs] for k, vs in samples.items()}
    rate = small_gemm_rate(bs, h, 4 * h, quick)
    flops = epoch_flops(n, t, f, h)
    return {"case": "train", "workload": name, "shape": [n, t, f, h, bs], "flops": flops,
            "small_gemm_gflops": rate, "bound_s": flops / rate / 1e9,
            "per_epoch_s": per_epoch, "replicas": reps}


def minimal_case(size, *, repeats: int) -> dict:
    """fwd+bwd of MinGRU / MinLSTM (both implementations; log-space and plain) next to
    jaxseq's GRU and LSTM at one size BxTxIxH, return_sequences, float32; compile time of
    each."""
    b, t, i, h = size
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, t, i)).astype(np.float32))
    seq = dict(return_sequences=True)
    layers = {"GRU": js.GRU(h, **seq), "LSTM": js.LSTM(h, **seq),
              "MinGRU sequential": js.MinGRU(h, implementation="sequential", **seq),
              "MinGRU parallel": js.MinGRU(h, implementation="parallel", **seq),
              "MinGRU sequential plain": js.MinGRU(h, implementation="sequential",
                                                       log_space=False, **seq),
              "MinLSTM sequential": js.MinLSTM(h, implementation="sequential", **seq),
              "MinLSTM parallel": js.MinLSTM(h, implementation="parallel", **seq)}
    stats = {}
    fns = {name: _jax_case(layer, x, backward=True, stats=stats, name=name)
           for name, layer in layers.items()}
    return {"case": "minimal", "shape": list(size), "samples_s": measure(fns, repeats),
            "jax_stats": stats}


def remat_case(*, quick: bool, repeats: int) -> dict:
    """LSTM(64) fwd+bwd (loss: mean of the last output), batch 8, 8 features, remat False/True,
    "auto" (fused) and "scan": temp bytes of the compiled gradient program per length, and
    interleaved timings at the longest length."""
    b, i, h = 8, 8, 64
    lengths = (6, 12) if quick else (500, 1000, 2000, 4000)
    rows, fns = [], {}
    for impl in ("auto", "scan"):
        for t in lengths:
            x = jax.random.normal(jax.random.key(0), (b, t, i))
            for r in (False, True):
                stats = {}
                fn = _jax_case(js.LSTM(h, implementation=impl, remat=r), x, backward=True,
                               stats=stats, name="lstm")
                rows.append({"implementation": impl, "time": t, "remat": r, **stats["lstm"]})
                if t == lengths[-1]:
                    fns[f"{impl} remat={r}"] = fn
    return {"case": "remat", "size_bih": [b, i, h], "lengths": list(lengths), "rows": rows,
            "samples_s": measure(fns, repeats)}


def compile_case(*, quick: bool, repeats: int) -> dict:
    """First-call time of a fresh jit of LSTM fwd+bwd, short vs long sequences."""
    b, i, h = (2, 3, 4) if quick else (16, 32, 32)
    lengths = (3, 30) if quick else (10, 1000)
    rows = []
    impls = (("auto", "jaxseq"),) if quick else (("auto", "jaxseq"), ("scan", "jaxseq [scan]"))
    for impl, name in impls:
        layer = js.LSTM(h, return_sequences=True, implementation=impl)
        for t in lengths:
            x = jax.random.normal(jax.random.key(0), (b, t, i))
            params = jax.jit(layer.init)(jax.random.key(1), x)
            samples = []
            for _ in range(1 if quick else 3):
                fn = jax.grad(lambda p, x, layer=layer: jnp.mean(layer.apply(p, x)),
                              argnums=(0, 1))
                t0 = time.perf_counter()
                jax.jit(fn).lower(params, x).compile()  # a new function: no cache hit
                samples.append(time.perf_counter() - t0)
            rows.append({"name": name, "time": t, "samples_s": samples})
    return {"case": "compile", "size_bih": [b, i, h], "lengths": list(lengths), "rows": rows}


# ---------------------------------------------------------------------------------------------
# Report


def _median(xs) -> float:
    return statistics.median(xs)


def layer_table(r: dict, peak: float) -> list[str]:
    b, t, i, h = r["size"]
    title = {"lstm": "LSTM fwd+bwd", "gru": "GRU fwd+bwd", "lstm_fwd": "LSTM forward",
             "gru_fwd": "GRU forward"}[r["case"]]
    names = list(r["samples_s"])
    ref = names[0]
    lines = [f"{title}  {b}x{t}x{i}x{h} (BxTxIxH)   ratio: to {ref}",
             f"  {'':16s}{'median ms':>11s}{'ratio':>8s}{'GFLOP/s':>9s}{'% peak':>8s}"
             f"{'temp MB':>9s}"]
    ref_med = _median(r["samples_s"][ref])
    for name in names:
        med = _median(r["samples_s"][name])
        gflops = r["flops"] / med / 1e9
        temp = r["jax_stats"].get(name, {}).get("temp_bytes")
        temp_s = f"{temp / 2**20:9.1f}" if temp is not None else f"{'':9s}"
        lines.append(f"  {name:16s}{med * 1e3:11.1f}{med / ref_med:8.2f}{gflops:9.1f}"
                     f"{100 * gflops / peak:7.0f}%{temp_s}")
    return lines


def report(results: list[dict], peak: float, notes: list) -> str:
    lines = [f"matmul peak (best large float32 matmul): {peak:.1f} GFLOP/s"]
    for r in results:
        lines.append("")
        if "size" in r:
            lines += layer_table(r, peak)
        elif r["case"] == "tutorial":
            lines.append("Tutorial (echo of 5 values): per-epoch (warm) and whole run (cold)")
            lines.append(f"  {'framing':14s}{'framework':10s}{'epochs':>7s}{'us/epoch':>10s}"
                         f"{'cold s':>8s}")
            for row in r["rows"]:
                lines.append(f"  {row['framing']:14s}{row['framework']:10s}{row['epochs']:7d}"
                             f"{row['per_epoch_s'] * 1e6:10.1f}{row['cold_s']:8.2f}")
        elif r["case"] == "replicas":
            lines.append("Replicas (many_to_many, tutorial data), warm median and cold:")
            for row in r["rows"]:
                lines.append(f"  {row['name']:42s}{_median(row['warm_s']) * 1e3:9.1f} ms"
                             f"{row['cold_s']:8.2f} s cold")
        elif r["case"] == "minimal":
            lines.append(f"minGRU / minLSTM fwd+bwd {'x'.join(map(str, r['shape']))} (BxTxIxH), "
                         "median ms, ratio to GRU, compile s:")
            gru = _median(r["samples_s"]["GRU"])
            for k, v in r["samples_s"].items():
                lines.append(f"  {k:26s}{_median(v) * 1e3:9.2f}{_median(v) / gru:8.2f}x"
                             f"{r['jax_stats'][k]['compile_s']:8.2f} s")
        elif r["case"] == "train":
            n, t, f, h, bs = r["shape"]
            lines.append(f"Training, {r['workload']}: LSTM({h}) + Dense(1), {n} x {t} x {f}, batch "
                         f"{bs}, Adam; per epoch (median); compute bound "
                         f"{r['bound_s'] * 1e3:.2f} ms ({r['flops'] / 1e6:.0f} MFLOP at the "
                         f"small-GEMM rate {r['small_gemm_gflops']:.0f} GFLOP/s)")
            base = _median(r["per_epoch_s"]["jaxseq"])
            for k, v in r["per_epoch_s"].items():
                m = _median(v)
                lines.append(f"  {k:28s}{m * 1e3:9.2f} ms  {m / base:6.2f}x jaxseq  "
                             f"{m / r['bound_s']:6.1f}x bound")
        elif r["case"] == "cross_validation":
            lines.append(f"Cross-validation ({r['folds']} folds x {r['seeds']} seeds, "
                         f"{r['epochs']} epochs, many_to_many), warm median and cold:")
            for row in r["rows"]:
                lines.append(f"  {row['name']:42s}{_median(row['warm_s']):9.2f} s"
                             f"{row['cold_s']:8.2f} s cold  (scores vs the loop: max rel "
                             f"diff {row['max_rel_diff']:.1e})")
        elif r["case"] == "compile":
            b, i, h = r["size_bih"]
            lines.append(f"Compile time, LSTM fwd+bwd (B={b}, I={i}, H={h}), first call:")
            for row in r["rows"]:
                lines.append(f"  {row['name']:16s} T={row['time']:<5d}"
                             f"{_median(row['samples_s']):7.2f} s")
        elif r["case"] == "remat":
            b, i, h = r["size_bih"]
            lines.append(f"remat: LSTM({h}) fwd+bwd, B={b}, I={i}; temp MB without -> with "
                         f"remat=True; median ms at T={r['lengths'][-1]}:")
            temp = {(w["implementation"], w["time"], w["remat"]): w["temp_bytes"] / 2**20
                    for w in r["rows"]}
            for impl, t, _ in [k for k in temp if not k[2]]:
                lines.append(f"  {impl:5s} T={t:<5d}{temp[impl, t, False]:9.2f} ->"
                             f"{temp[impl, t, True]:7.2f}")
            for k, v in r["samples_s"].items():
                lines.append(f"  {k:16s}{_median(v) * 1e3:9.1f} ms")
    for n in notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=None,
                        help=f"BxTxIxH,... (default {DEFAULT_SIZES})")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--cases", default=",".join(ALL_CASES),
                        help=f"comma-separated subset of {','.join(ALL_CASES)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--keras-epochs", type=int, default=None,
                        help="cap Keras' epochs in the tutorial case (default: the tutorial's)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="split the CPU into N JAX devices (e.g. one per core); the "
                             "replicas case then also shards its replicas over them")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    if args.cpu_devices is not None:
        try:
            parallel.use_cpu_devices(args.cpu_devices)
        except (ValueError, RuntimeError) as err:
            parser.error(f"--cpu-devices: {err}")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(ALL_CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; expected a subset of {list(ALL_CASES)}")
    sizes = args.sizes or parse_sizes(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    repeats = args.repeats or (2 if args.quick else 5)
    if repeats < 1:
        parser.error("--repeats expects a positive integer.")

    _import_torch()
    env = environment()
    load_start = _loadavg()
    t_start = time.perf_counter()
    notes: list[str] = []
    peak = matmul_peak(args.quick)
    results = []
    case_wall = {}
    for case in cases:
        t_case = time.perf_counter()
        if case in ("lstm", "gru", "lstm_fwd", "gru_fwd"):
            kind, backward = case.split("_")[0], not case.endswith("_fwd")
            for size in sizes:
                results.append(layer_case(kind, size, backward=backward, repeats=repeats,
                                          notes=notes, with_scan=not args.quick))
                meds = {k: f"{_median(v) * 1e3:.1f}" for k, v in results[-1]["samples_s"].items()}
                print(f"done {case} {'x'.join(map(str, size))}: median ms {meds}", flush=True)
        elif case == "tutorial":
            results.append(tutorial_case(quick=args.quick, keras_epochs=args.keras_epochs,
                                         notes=notes))
            print("done tutorial", flush=True)
        elif case == "replicas":
            results.append(replicas_case(quick=args.quick, notes=notes,
                                         cpu_devices=args.cpu_devices is not None))
        elif case == "minimal":
            for size in ([(4, 8, 3, 5)] if args.quick else MINIMAL_SIZES):
                results.append(minimal_case(size, repeats=repeats))
                print(f"done minimal {'x'.join(map(str, size))}", flush=True)
        elif case == "train":
            for name in WORKLOADS:
                results.append(train_case(name, quick=args.quick, notes=notes,
                                          cpu_devices=args.cpu_devices is not None))
                print(f"done train {name}", flush=True)
        elif case == "cross_validation":
            results.append(cv_case(quick=args.quick, cpu_devices=args.cpu_devices is not None))
        elif case == "forecaster":
            import bench_forecaster  # beside this script (statsmodels' series; optional)

            results.append(bench_forecaster.forecaster_case(quick=args.quick, notes=notes))
            print(bench_forecaster.table(results[-1]), flush=True)
        elif case == "compile":
            results.append(compile_case(quick=args.quick, repeats=repeats))
        elif case == "remat":
            results.append(remat_case(quick=args.quick, repeats=repeats))
        case_wall[case] = time.perf_counter() - t_case
    text = report(results, peak["gflops"], notes)
    print("\n" + text)
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None
                                                       else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        **env,
        "load_average": {"start": load_start, "end": _loadavg()},
        "repeats": repeats,
        "matmul_peak": peak,
        "results": results,
        "notes": notes,
        "case_wall_s": case_wall,
        "total_wall_s": time.perf_counter() - t_start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench.json"
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path} ({payload['total_wall_s']:.0f} s in all)")
    return payload


if __name__ == "__main__":
    main()
