"""jaxseq: Keras-style recurrent sequence models for JAX and Flax linen."""

import os as _os

from jaxseq import (
    checkpointing,
    contracts,
    evaluation,
    interop,
    models,
    parallel,
    problems,
    registry,
    training,
)
from jaxseq.cells import GRUCell, LSTMCell, SimpleRNNCell
from jaxseq.checkpointing import load_params, save_params
from jaxseq.conv_lstm import ConvLSTM1D, ConvLSTM2D
from jaxseq.evaluation import replicas
from jaxseq.evaluation.replicas import skill
from jaxseq.inference import rollout
from jaxseq.layers import Dense, Dropout, Masking
from jaxseq.minimal import MinGRU, MinLSTM
from jaxseq.models import Sequential, seq2seq
from jaxseq.recurrent import GRU, LSTM, RNN, Bidirectional, SimpleRNN
from jaxseq.saving import load_model, save_model
from jaxseq.summary import summary, summary_rows
from jaxseq.training import (
    Callback,
    CheckpointSaveError,
    EarlyStopping,
    History,
    NonFiniteLossError,
    TrainState,
    evaluate,
    fit,
    fit_replicas,
    predict,
)
from jaxseq.training.state import reset_states
from jaxseq.wrappers import RepeatVector, TimeDistributed

__version__ = "0.1.0"

if _os.environ.get("JAXSEQ_CACHE_DIR"):  # the persistent compilation cache, for any program
    training.enable_compilation_cache()
del _os

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "Callback",
    "CheckpointSaveError",
    "ConvLSTM1D",
    "ConvLSTM2D",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "GRUCell",
    "History",
    "LSTMCell",
    "Masking",
    "MinGRU",
    "MinLSTM",
    "NonFiniteLossError",
    "RepeatVector",
    "Sequential",
    "SimpleRNN",
    "SimpleRNNCell",
    "TimeDistributed",
    "TrainState",
    "checkpointing",
    "contracts",
    "evaluation",
    "evaluate",
    "fit",
    "fit_replicas",
    "interop",
    "load_model",
    "load_params",
    "models",
    "parallel",
    "predict",
    "problems",
    "registry",
    "replicas",
    "reset_states",
    "rollout",
    "save_model",
    "save_params",
    "seq2seq",
    "skill",
    "summary",
    "summary_rows",
    "training",
]


def __dir__() -> list[str]:
    # the public names only: implementation modules (jaxseq.cells, jaxseq.recurrent, ...) stay
    # importable by their full names but are not part of the package's namespace
    return sorted([*__all__, *(name for name in globals() if name.startswith("__"))])
