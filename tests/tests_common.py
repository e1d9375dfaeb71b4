"""Cases shared by tests and the subprocess workers they start (not a test module)."""

import contextlib

import jax
import numpy as np

from jaxseq import models, training

DATA_SEED = 0


def dist_case(seed: int = DATA_SEED):
    """(model, x, y, fit kwargs, fit_replicas kwargs) for the device tests: 16 samples, batches
    of 8 (divisible by 4 and 8 devices)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(16, 4, 1)).astype(np.float32)
    y = np.flip(x, axis=1).copy()
    fit_kw = dict(epochs=4, batch_size=8, seed=0)
    rep_kw = dict(seeds=list(range(4)), epochs=3, batch_size=8)
    return models.many_to_many(), x, y, fit_kw, rep_kw


def _arrays(value) -> bool:
    leaves = jax.tree.leaves(value)
    return bool(leaves) and all(isinstance(v, (np.ndarray, np.generic, jax.Array))
                                for v in leaves)


def _compiled(method, args, kwargs):
    dynamic = {k: v for k, v in kwargs.items() if _arrays(v)}
    static = {k: v for k, v in kwargs.items() if k not in dynamic}
    return jax.jit(lambda a, d: method(*a, **d, **static))(args, dynamic)


def jit_init(module, *args, **kwargs):
    """`module.init(*args, **kwargs)` as one compiled program. Run eagerly, every operation of
    an init (and of the forward it traces) compiles a program of its own for each new shape;
    keyword arguments that hold arrays are the program's inputs, the others are fixed."""
    return _compiled(module.init, args, kwargs)


def jit_apply(module, *args, **kwargs):
    """`module.apply(*args, **kwargs)` as one compiled program (see `jit_init`)."""
    return _compiled(module.apply, args, kwargs)


@contextlib.contextmanager
def recording_compiles():
    """Inside the block, the list of the names of the programs XLA compiles (JAX's monitoring
    event), e.g. "jit(train_loop)"; an eager operation compiles as "jit(<its name>)"."""
    names = []

    def listener(name, duration, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def compiled_programs(fn) -> list[str]:
    """The names of the programs XLA compiles while `fn()` runs (`recording_compiles`)."""
    with recording_compiles() as names:
        fn()
    return names


def backend_compiles(fn) -> int:
    """How many XLA backend compiles running `fn()` triggers."""
    return len(compiled_programs(fn))


# XLA's own defaults for the options conftest lowers for the suite's programs: a test that
# compares a driver's program with what a user compiles (`jax.jit` without options) compiles its
# reference with these.
XLA_DEFAULTS = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False,
                "xla_cpu_use_fusion_emitters": True}


def user_jit(fn):
    """`jax.jit(fn)` compiled with XLA's default options (see XLA_DEFAULTS), whatever XLA_FLAGS
    the suite sets."""
    return jax.jit(fn, compiler_options=XLA_DEFAULTS)


@contextlib.contextmanager
def at_optimization_level(level: int | None):
    """The drivers compile at `level` (None: jaxseq's default) inside the block, at the suite's
    level again after it (conftest)."""
    before = training.optimization_level()
    training.set_optimization_level(level)
    try:
        yield
    finally:
        training.set_optimization_level(before)
