"""Training: a functional core (pure, jit/vmap/scan-safe) and the drivers built on it.

Core (see `loop`): `create_train_state`, `train_step`, `eval_step`, `train_epoch`,
`evaluate_batches`, `train_loop`; data as `Batch`; losses and metrics with Keras' reduction
(`losses`); Keras' optimizers by name with their clipping arguments (`keras_optimizer`,
module `optimizers`). Drivers: `fit`, `fit_replicas`, `predict`, `evaluate`. A run's shape
(`spec`): `Program`, `Layout`, `Host`, `Source`, built by the parsers of `parse` and run by
`drive`. Compilation: `clear_caches`, `set_cache_size`, `cache_size`, `compiler_options`,
`set_optimization_level`, `optimization_level`, `enable_compilation_cache`.
"""

from jaxseq.history import CheckpointSaveError, History, NonFiniteLossError
from jaxseq.training import (
    callbacks,
    compile,
    data,
    drivers,
    loop,
    losses,
    optimizers,
    parse,
    programs,
    spec,
    state,
)
from jaxseq.training.callbacks import Callback, EarlyStopping
from jaxseq.training.compile import (
    cache_size,
    clear_caches,
    compiler_options,
    enable_compilation_cache,
    optimization_level,
    set_cache_size,
    set_optimization_level,
)
from jaxseq.training.data import Batch
from jaxseq.training.drivers import drive, fit, fit_replicas
from jaxseq.training.loop import (
    LoopState,
    eval_step,
    evaluate_batches,
    train_epoch,
    train_loop,
    train_step,
)
from jaxseq.training.optimizers import keras_optimizer
from jaxseq.training.predict import evaluate, predict
from jaxseq.training.programs import create_train_state
from jaxseq.training.spec import Host, Layout, Program, Source
from jaxseq.training.state import DEFAULT_OPTIMIZER, ModelFn, TrainState, split_seed

__all__ = [
    "CheckpointSaveError",
    "DEFAULT_OPTIMIZER",
    "Batch",
    "Callback",
    "EarlyStopping",
    "History",
    "Host",
    "Layout",
    "LoopState",
    "ModelFn",
    "NonFiniteLossError",
    "Program",
    "Source",
    "TrainState",
    "cache_size",
    "callbacks",
    "clear_caches",
    "compile",
    "compiler_options",
    "create_train_state",
    "data",
    "drive",
    "drivers",
    "enable_compilation_cache",
    "eval_step",
    "evaluate",
    "evaluate_batches",
    "fit",
    "fit_replicas",
    "keras_optimizer",
    "losses",
    "loop",
    "optimization_level",
    "optimizers",
    "parse",
    "predict",
    "programs",
    "set_cache_size",
    "set_optimization_level",
    "spec",
    "split_seed",
    "state",
    "train_epoch",
    "train_loop",
    "train_step",
]


def __dir__() -> list[str]:
    # the public names only (other submodules are imported by their full names)
    return sorted([*__all__, *(name for name in globals() if name.startswith("__"))])
