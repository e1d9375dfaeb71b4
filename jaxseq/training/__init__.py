"""Training: a functional core (pure, jit/vmap/scan-safe) and the drivers built on it.

Core (see `loop`): `create_train_state`, `train_step`, `eval_step`, `train_epoch`,
`evaluate_batches`, `train_loop`; data as `Batch`; losses and metrics with Keras' reduction
(`losses`); Keras' optimizers by name with their clipping arguments (`keras_optimizer`,
module `optimizers`). Drivers: `fit`, `fit_replicas`, `predict`, `evaluate`. Compilation cache:
`clear_caches`, `set_cache_size`, `cache_size`.
"""

from jaxseq.training import (
    callbacks,
    compile,
    data,
    drivers,
    loop,
    losses,
    optimizers,
    state,
)
from jaxseq.training.callbacks import Callback, EarlyStopping
from jaxseq.training.compile import (
    cache_size,
    clear_caches,
    compiler_options,
    enable_compilation_cache,
    set_cache_size,
)
from jaxseq.training.data import Batch
from jaxseq.training.drivers import DEFAULT_OPTIMIZER, fit, fit_replicas, init_state
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
from jaxseq.training.state import (
    CheckpointSaveError,
    History,
    ModelFn,
    NonFiniteLossError,
    TrainState,
    create_train_state,
    split_seed,
)

__all__ = [
    "CheckpointSaveError",
    "DEFAULT_OPTIMIZER",
    "Batch",
    "Callback",
    "EarlyStopping",
    "History",
    "LoopState",
    "ModelFn",
    "NonFiniteLossError",
    "TrainState",
    "cache_size",
    "callbacks",
    "clear_caches",
    "compile",
    "compiler_options",
    "create_train_state",
    "data",
    "drivers",
    "enable_compilation_cache",
    "eval_step",
    "evaluate",
    "evaluate_batches",
    "fit",
    "fit_replicas",
    "init_state",
    "keras_optimizer",
    "losses",
    "loop",
    "optimizers",
    "predict",
    "set_cache_size",
    "split_seed",
    "state",
    "train_epoch",
    "train_loop",
    "train_step",
]


def __dir__() -> list[str]:
    # the public names only (submodules such as `programs` are imported by their full names)
    return sorted([*__all__, *(name for name in globals() if name.startswith("__"))])
