"""jaxseq: Keras-style recurrent sequence models for JAX and Flax linen."""

from jaxseq import contracts, problems
from jaxseq.cells import GRUCell, LSTMCell, SimpleRNNCell
from jaxseq.recurrent import GRU, LSTM, RNN, Bidirectional, SimpleRNN
from jaxseq.wrappers import RepeatVector, TimeDistributed

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "Bidirectional",
    "GRUCell",
    "LSTMCell",
    "RepeatVector",
    "SimpleRNN",
    "SimpleRNNCell",
    "TimeDistributed",
    "contracts",
    "problems",
]
