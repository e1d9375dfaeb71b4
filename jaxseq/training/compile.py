"""Compilation for the drivers: `jax.jit` with XLA:CPU options, and one bounded, clearable cache.

The drivers (`fit`, `fit_replicas`, `predict`, `evaluate`) build one jitted program per static
setting (model, optimizer object, loss, metrics, batch size, ...) and keep it in an LRU cache of
`cache_size()` entries (default 64; `set_cache_size(n)`, `clear_caches()`). Keys hold the
objects themselves: optax transformations are tuples of closures and cannot be weakly
referenced, so an entry keeps its model and optimizer alive until it is evicted. Array shapes are
not part of the key: each jitted program keeps JAX's own per-shape cache.

XLA:CPU options (`compiler_options`): the loop emitters instead of the MLIR fusion emitters
(the training programs compile in about half the time and run as fast), XLA's default
optimization level (3, with LLVM's expensive passes) for the programs that train and predict,
and level 1 for programs that run once per fit (initialization; bitwise the same parameters,
tested). The levels are set explicitly, so the drivers' programs compile alike whatever
XLA_FLAGS sets as the default for the other programs of the process (the test suite compiles
its own programs at level 0). The benchmarks page (`experiments/bench.py --cases compile`)
measures compile times. Other backends get no options. XLA takes options only on an outermost
program, so a jaxseq program called with traced arguments (inside a user's `jit`, `vmap`,
`grad`) runs as a plain nested jit.
Cache keys hold each part with its type (see `_key`): equal values of different types, such as
optax's `GradientTransformation` and `GradientTransformationExtraArgs` twins, never share a
program.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable
from typing import Any

import jax

CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 3,
               "xla_llvm_disable_expensive_passes": False}
CPU_ONCE_OPTIONS = {**CPU_OPTIONS, "xla_backend_optimization_level": 1}

_DEFAULT_SIZE = 64
_cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_size = _DEFAULT_SIZE


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache at `path` (default: $JAXSEQ_CACHE_DIR), for
    every program of this process, jaxseq's and the user's: a second process that compiles the
    same programs loads them from disk. Sets the minimum compile time worth caching to 0 (JAX's
    default, 1 s, skips jaxseq's sub-second programs). Importing jaxseq calls it when
    JAXSEQ_CACHE_DIR is set. Returns the directory."""
    path = path if path is not None else os.environ.get("JAXSEQ_CACHE_DIR")
    if not path:
        raise ValueError("enable_compilation_cache needs a directory: pass path=... or set "
                         "JAXSEQ_CACHE_DIR.")
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def compiler_options(*, once: bool = False) -> dict | None:
    """The XLA options jaxseq's own programs compile with on this backend (None off CPU).
    `once`: for a program that runs once per fit (initialization)."""
    if jax.default_backend() != "cpu":
        return None
    return dict(CPU_ONCE_OPTIONS if once else CPU_OPTIONS)


def _traced(args) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args))


class Jitted:
    """`jax.jit(fn, compiler_options=...)` at top level; a plain `jax.jit(fn)` when any argument
    is a tracer (XLA rejects options on nested programs)."""

    def __init__(self, fn: Callable, options: dict | None, **kwargs):
        self.top = jax.jit(fn, compiler_options=options, **kwargs) if options else None
        self.nested = jax.jit(fn, **kwargs)

    def __call__(self, *args, **kwargs):
        if self.top is not None and not _traced((args, kwargs)):
            return self.top(*args, **kwargs)
        return self.nested(*args, **kwargs)


def jit(fn: Callable, *, once: bool = False, **kwargs) -> Jitted:
    """`jax.jit(fn, **kwargs)` with `compiler_options(once=once)` (see `Jitted`)."""
    return Jitted(fn, compiler_options(once=once), **kwargs)


def _key(obj) -> Any:
    """A cache key part: the value with its type, all the way down tuples (a NamedTuple such as
    optax's `GradientTransformation(init, update)` equals its `GradientTransformationExtraArgs`
    twin as a tuple, yet compiles differently); unhashable objects by identity."""
    if isinstance(obj, tuple):
        return ("t", type(obj), tuple(_key(o) for o in obj))
    try:
        hash(obj)
        return ("h", type(obj), obj)
    except TypeError:
        return ("id", id(obj))


_shapes: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_SHAPES_SIZE = 256


# One lock for both stores: fit_replicas(strategy="concurrent") looks programs up from
# several threads; building under the lock keeps one program per key.
_lock = threading.RLock()


def _memo(store, size: int, kind: str, parts, build: Callable):
    key = (kind, *(_key(p) for p in parts))
    with _lock:
        if key in store:
            store.move_to_end(key)
            return store[key][1]
        value = build()
        store[key] = (parts, value)
        while len(store) > size:
            store.popitem(last=False)
        return value


def cached(kind: str, *parts, build: Callable):
    """The memo of `build()` (a compiled program) for (kind, parts), least recently used
    evicted first. Unhashable parts are keyed by identity and kept alive by their entry, so an
    id is never reused while the entry exists."""
    return _memo(_cache, _size, kind, parts, build)


def cached_shape(kind: str, *parts, build: Callable):
    """`cached` for shape-check results (abstract evaluations, nothing compiled), in their own
    LRU of 256, so checking many input shapes never evicts compiled programs."""
    return _memo(_shapes, _SHAPES_SIZE, kind, parts, build)


def cache_size() -> int:
    """How many compiled programs jaxseq keeps (default 64)."""
    return _size


def set_cache_size(n: int) -> None:
    """Keep at most `n` >= 1 compiled programs (evicting the least recently used now)."""
    global _size
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_cache_size expects an int >= 1; got {n!r}.")
    _size = n
    while len(_cache) > _size:
        _cache.popitem(last=False)


def cache_len() -> int:
    """How many compiled programs are cached now."""
    return len(_cache)


def clear_caches() -> None:
    """Drop every compiled program jaxseq keeps (and the models and optimizers they hold), and
    the shape-check results."""
    _cache.clear()
    _shapes.clear()
