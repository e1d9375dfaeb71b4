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
XLA_FLAGS sets as the default for the other programs of the process. `set_optimization_level`
trades run speed for compile speed, for work where compiling dominates (unit tests of code that
calls `fit`, notebooks with short runs; jaxseq's own test suite runs at level 0). The
benchmarks page (`experiments/bench.py --cases compile`) measures compile times. Other backends
get no options. XLA takes options only on an outermost program, so a jaxseq program called
with traced arguments (inside a user's `jit`, `vmap`, `grad`) runs as a plain nested jit.
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

DEFAULT_LEVEL = 3
_ENV_LEVEL = "JAXSEQ_OPTIMIZATION_LEVEL"


def _level_from_env() -> int:
    value = os.environ.get(_ENV_LEVEL, "").strip()
    if not value:
        return DEFAULT_LEVEL
    if value not in ("0", "1", "2", "3"):
        raise ValueError(f"{_ENV_LEVEL} must be 0, 1, 2 or 3 (XLA:CPU's optimization level of "
                         f"jaxseq's programs); got {value!r}. Unset it for the default, 3.")
    return int(value)


_level = _level_from_env()

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
    """The XLA options jaxseq's own programs compile with on this backend (None off CPU), at
    the level `set_optimization_level` set (default 3). `once`: for a program that runs once
    per fit (initialization), at level min(level, 1)."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_cpu_use_fusion_emitters": False,
            "xla_backend_optimization_level": min(_level, 1) if once else _level,
            "xla_llvm_disable_expensive_passes": _level < DEFAULT_LEVEL}


def optimization_level() -> int:
    """The XLA:CPU optimization level the drivers compile their programs at (see
    `set_optimization_level`)."""
    return _level


def set_optimization_level(level: int | None = None) -> None:
    """Compile the drivers' programs from now on at XLA:CPU optimization level `level`.

    `fit`, `fit_replicas`, `cross_validate`, `predict`, `evaluate`, `rollout` and
    `create_train_state` compile at XLA's default level 3 (initialization at level 1). A
    lower level compiles faster and runs slower (LLVM optimizes less); it pays where compiling
    dominates: unit tests of code that trains models, short runs in a notebook. Below level 3
    LLVM's expensive passes are off as well (`xla_llvm_disable_expensive_passes`). Programs
    already compiled stay cached under their own level; a call at another level compiles its
    own. No effect off CPU. The environment variable JAXSEQ_OPTIMIZATION_LEVEL (0..3), read
    when jaxseq is imported, sets the level for a whole process and the processes it starts (a
    test suite's workers).

    Args:
      level: 0, 1, 2 or 3 (XLA's `xla_backend_optimization_level`); None restores jaxseq's
        default, 3.

    Raises:
      ValueError: `level` is not None or an int in 0..3.
    """
    global _level
    if level is None:
        level = DEFAULT_LEVEL
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 3:
        raise ValueError(f"set_optimization_level expects an int in 0..3 or None (the "
                         f"default, 3); got {level!r}.")
    _level = level


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
    id is never reused while the entry exists. The key holds the optimization level the
    program compiles at (`set_optimization_level`)."""
    return _memo(_cache, _size, kind, (_level, *parts), build)


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
