"""jaxseq: Keras-style recurrent sequence models for JAX and Flax linen."""

from jaxseq import checkpointing, contracts, models, problems, training
from jaxseq.callbacks import EarlyStopping
from jaxseq.cells import GRUCell, LSTMCell, SimpleRNNCell
from jaxseq.checkpointing import load_params, save_params
from jaxseq.models import Sequential
from jaxseq.recurrent import GRU, LSTM, RNN, Bidirectional, SimpleRNN
from jaxseq.summary import summary, summary_rows
from jaxseq.training import Callback, History, NonFiniteLossError, evaluate, fit, predict
from jaxseq.wrappers import RepeatVector, TimeDistributed

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "Callback",
    "EarlyStopping",
    "History",
    "NonFiniteLossError",
    "Sequential",
    "checkpointing",
    "evaluate",
    "fit",
    "load_params",
    "models",
    "predict",
    "save_params",
    "summary",
    "summary_rows",
    "training",
    "GRUCell",
    "LSTMCell",
    "RepeatVector",
    "SimpleRNN",
    "SimpleRNNCell",
    "TimeDistributed",
    "contracts",
    "problems",
]
