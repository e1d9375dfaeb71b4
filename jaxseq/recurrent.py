"""Keras 3's recurrent layers: `LSTM`, `GRU` and `SimpleRNN` (with `RNN`, the base of every
recurrent layer, and `Bidirectional`).

Each layer owns its cell's parameters directly, in Keras order and layout (`kernel`,
`recurrent_kernel`, `bias`), so parameter counts and weights match Keras exactly. `CellRNN`
(`jaxseq.cell_rnn`) runs the recurrence of the cell's step (`jaxseq.cells`) inside the plumbing
of `RNN` (`jaxseq.rnn`); `Bidirectional` (`jaxseq.bidirectional`) wraps any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from jaxseq.bidirectional import Bidirectional
from jaxseq.cell_rnn import CellRNN
from jaxseq.cells import CellBase, GRUCell, LSTMCell, SimpleRNNCell
from jaxseq.normalization import NORM_EPSILON
from jaxseq.registry import register
from jaxseq.rnn import RNN

__all__ = ["GRU", "LSTM", "RNN", "Bidirectional", "SimpleRNN"]


@register(keras="LSTM", torch="LSTM")
class LSTM(CellRNN):
    """Keras 3 `LSTM`: a long short-term memory layer over (batch, time, features) inputs.

    Each step, with gates i, f, c, o in that order (`keras/src/layers/rnn/lstm.py`;
    Hochreiter & Schmidhuber, 1997):
    `z = x @ kernel + h @ recurrent_kernel + bias`, split into four (batch, units) parts;
    `c' = ract(z_f) * c + ract(z_i) * act(z_c)`; `h' = ract(z_o) * act(c')`.
    Parameters (Keras' names and layout): `kernel` (features, 4 units), `recurrent_kernel`
    (units, 4 units), `bias` (4 units,): LSTM(5) on 1 feature has 140, as in Keras.

    Attributes:
      units: int >= 1, the width of h, c and the output.
      activation: candidate and output activation: a Keras name ("tanh", "sigmoid", "relu",
        "linear", "elu", "gelu", "hard_sigmoid", "softsign", "swish", "silu") or a callable.
        Default "tanh".
      recurrent_activation: the gates' activation, a name or a callable. Default "sigmoid".
      unit_forget_bias: bool. True (default): the forget gate's bias starts at one (and the
        other gates' at `bias_init`), as Keras (Jozefowicz et al., 2015).
      proj_size: int >= 0. p > 0: PyTorch's LSTM with projections (`torch.nn.LSTM(...,
        proj_size=p)`; Sak et al., 2014): h = (o * act(c)) @ `projection_kernel` (units, p),
        `recurrent_kernel` (p, 4 units); h and the output are (..., p), c stays (batch,
        units). Runs on the "scan" implementation. Default 0 (none).
      use_bias: bool, whether the layer has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel`. Default
        `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal`
        (Keras' `recurrent_initializer`).
      bias_init: initializer of `bias`. Default zeros (Keras' `bias_initializer`).
      return_sequences: bool. False (default): return the last output, (batch, units);
        True: every step's output, (batch, time, units).
      return_state: bool. True: return `(output, output, h, c)`. Default False.
      go_backwards: bool. True: process the sequence from its last step to its first and
        return the outputs in that processing (reversed) order, as Keras. Default False.
      unroll: False (default: a loop), True (every step unrolled: faster for short
        sequences, a larger program) or an int k >= 1 (k steps per loop iteration).
      dropout: float in [0, 1), the fraction of the input features dropped, one mask per
        sequence for every step (Keras); only with `deterministic=False`. Default 0.
      recurrent_dropout: float in [0, 1), the fraction of h dropped where it enters the
        recurrent product (one mask per sequence; the carried h is not dropped). Default 0.
      stateful: bool. True: the final states of each call are kept in the collection
        "rnn_state" (one row per sample; the batch size is fixed by `init`) and start the
        next call; apply with `mutable=["rnn_state"]` (`fit` does), zero them with
        `jaxseq.reset_states`. An explicit `initial_state` wins. Default False.
      zero_output_for_mask: bool. True: masked steps output zeros instead of repeating the
        previous output (Keras' `Bidirectional` sets it). Default False.
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.
      layer_norm: bool. True: the layer-normalised LSTM of TensorFlow Addons'
        `LayerNormLSTMCell` (Ba, Kiros and Hinton, 2016, arXiv:1607.06450): `x @ kernel` and
        `h @ recurrent_kernel` normalised separately over the 4 units gate axis, and the new
        cell state c before `activation` (the carried c is the normalised one; `LSTMCell`
        gives the formulas). Adds `kernel_norm_gamma` / `kernel_norm_beta` (4 units,),
        `recurrent_norm_gamma` / `recurrent_norm_beta` (4 units,) and `state_norm_gamma` /
        `state_norm_beta` (units,), gamma ones and beta zeros at init. Scan path only: "auto"
        resolves to it, "fused" raises ValueError. Default False.
      norm_epsilon: float > 0 added to the variance of each norm. Default 1e-3 (TF-Addons).
      implementation: "auto" (default), "scan" or "fused". "scan": `lax.scan` of the step,
        the input projection taken for all steps in one product before the loop. "fused":
        one `jax.custom_jvp` over the layer whose reverse mode takes the weight gradients
        out of the loop (`jaxseq.fused`); it supports the activations tanh, sigmoid, linear
        and relu and no `proj_size`. "auto": "fused" where it supports the layer, else
        "scan". Both differentiate in forward mode (`jax.jvp`, `jax.jacfwd`,
        `jax.linearize`) and reverse mode, to any order.
      remat: False (default), True or an int k >= 1: gradient checkpointing over time
        (`jaxseq.remat`): segments of ceil(sqrt(time)) steps (True) or k steps, only the
        states between segments kept for the backward pass, one segment recomputed at a time
        (about one more forward pass). Same outputs, gradients equal to float rounding.

    Example:
      >>> import jax, numpy as np, jaxseq as js
      >>> layer = js.LSTM(5, return_sequences=True, return_state=True)
      >>> x = np.zeros((2, 7, 1), np.float32)
      >>> variables = layer.init(jax.random.PRNGKey(0), x)
      >>> out, h, c = layer.apply(variables, x)
      >>> out.shape, h.shape, c.shape
      ((2, 7, 5), (2, 5), (2, 5))

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`
      (see `jaxseq.RNN.__call__`):

      - `x`: (batch, time, features) floating array (NumPy, JAX or a nested list).
      - `mask`: optional (batch, time) bool or int, True at real steps. As Keras 3, a masked
        step keeps the states and repeats the previous output; a fully masked row returns its
        initial state; values under the mask (NaN included) never reach the arithmetic.
      - `initial_state`: `(h, c)`, each (batch, units) (h (batch, p) with `proj_size`);
        None gives zeros (or the kept states when `stateful`).
      - `deterministic`: False applies the dropouts and needs a "dropout" rng.

    Returns:
      output (jax.Array | tuple[jax.Array, ...]): (batch, time, units) with `return_sequences`, else
        (batch, units); with `return_state`, `(output, h, c)`, h and c each (batch, units).
        The dtype is `dtype` or the promotion of x's and the parameters'.

    Raises:
      ValueError: units < 1, a dropout rate outside [0, 1), an unknown `implementation`,
        "fused" where it does not apply, x not (batch, time, features) or with another
        feature count than at init, a mask not (batch, time), initial states of the wrong
        count or shapes, a stateful layer fed another batch size than at init.
      TypeError: units not an int, x not floating, a float mask.
    """

    recurrent_activation: str | Callable = "sigmoid"
    unit_forget_bias: bool = True
    proj_size: int = 0
    layer_norm: bool = False
    norm_epsilon: float = NORM_EPSILON

    cell_class: ClassVar[type[CellBase]] = LSTMCell
    extra_cell_fields: ClassVar[tuple[str, ...]] = ("recurrent_activation", "unit_forget_bias",
                                                    "proj_size", "layer_norm", "norm_epsilon")


@register(keras="GRU", torch="GRU")
class GRU(CellRNN):
    """Keras 3 `GRU`: a gated recurrent unit layer over (batch, time, features) inputs.

    Each step, with gates z (update), r (reset), h (candidate) in that order
    (`keras/src/layers/rnn/gru.py`; Cho et al., 2014):
    `z = ract(x W_z + h U_z + b)`, `r = ract(x W_r + h U_r + b)`, `h' = z * h + (1 - z) * h~`
    with `h~ = act(x W_h + b_h + r * (h U_h + rb_h))` when `reset_after=True` (Keras 3's
    and cuDNN's default) or `h~ = act(x W_h + b_h + (r * h) U_h)` when False.
    Parameters: `kernel` (features, 3 units), `recurrent_kernel` (units, 3 units), `bias`
    (2, 3 units) with `reset_after=True` (row 0 the input bias, row 1 the recurrent bias), or
    (3 units,) with `reset_after=False`.

    Attributes:
      units: int >= 1, the width of h and the output.
      activation: the candidate's activation: a Keras name ("tanh", "sigmoid", "relu",
        "linear", "elu", "gelu", "hard_sigmoid", "softsign", "swish", "silu") or a callable.
        Default "tanh".
      recurrent_activation: the gates' activation, a name or a callable. Default "sigmoid".
      reset_after: bool. True (default): the reset gate multiplies the recurrent product
        (with its own recurrent bias); False: it multiplies h before the product (the
        original formulation; runs on the "scan" implementation).
      use_bias: bool, whether the layer has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel`. Default
        `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal`
        (Keras' `recurrent_initializer`).
      bias_init: initializer of `bias`. Default zeros (Keras' `bias_initializer`).
      return_sequences: bool. False (default): return the last output, (batch, units);
        True: every step's output, (batch, time, units).
      return_state: bool. True: return `(output, output, h)`. Default False.
      go_backwards: bool. True: process the sequence from its last step to its first and
        return the outputs in that processing (reversed) order, as Keras. Default False.
      unroll: False (default: a loop), True (every step unrolled: faster for short
        sequences, a larger program) or an int k >= 1 (k steps per loop iteration).
      dropout: float in [0, 1), the fraction of the input features dropped, one mask per
        sequence for every step (Keras); only with `deterministic=False`. Default 0.
      recurrent_dropout: float in [0, 1), the fraction of h dropped where it enters the
        recurrent product (one mask per sequence; the carried h is not dropped). Default 0.
      stateful: bool. True: the final states of each call are kept in the collection
        "rnn_state" (one row per sample; the batch size is fixed by `init`) and start the
        next call; apply with `mutable=["rnn_state"]` (`fit` does), zero them with
        `jaxseq.reset_states`. An explicit `initial_state` wins. Default False.
      zero_output_for_mask: bool. True: masked steps output zeros instead of repeating the
        previous output (Keras' `Bidirectional` sets it). Default False.
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.
      layer_norm: bool (needs `reset_after=True`). True: the rule of TensorFlow Addons'
        `LayerNormLSTMCell` (Ba, Kiros and Hinton, 2016) applied to the GRU: `x @ kernel` and
        `h @ recurrent_kernel` normalised separately over the 3 units gate axis, each before
        its bias row (`GRUCell` gives the formulas). Adds `kernel_norm_gamma` /
        `kernel_norm_beta` and `recurrent_norm_gamma` / `recurrent_norm_beta`, each
        (3 units,). Scan path only, as for `LSTM`. Default False.
      norm_epsilon: float > 0 added to the variance of each norm. Default 1e-3.
      implementation: "auto" (default), "scan" or "fused". "scan": `lax.scan` of the step,
        the input projection taken for all steps in one product before the loop. "fused":
        one `jax.custom_jvp` over the layer whose reverse mode takes the weight gradients
        out of the loop (`jaxseq.fused`); it supports `reset_after=True` with the
        activations tanh, sigmoid, linear and relu. "auto": "fused" where it supports the
        layer, else "scan". Both differentiate in forward mode (`jax.jvp`, `jax.jacfwd`,
        `jax.linearize`) and reverse mode, to any order.
      remat: False (default), True or an int k >= 1: gradient checkpointing over time
        (`jaxseq.remat`): segments of ceil(sqrt(time)) steps (True) or k steps, only the
        states between segments kept for the backward pass, one segment recomputed at a time
        (about one more forward pass). Same outputs, gradients equal to float rounding.

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`
      (see `jaxseq.RNN.__call__`):

      - `x`: (batch, time, features) floating array (NumPy, JAX or a nested list).
      - `mask`: optional (batch, time) bool or int, True at real steps. As Keras 3, a masked
        step keeps the states and repeats the previous output; a fully masked row returns its
        initial state; values under the mask (NaN included) never reach the arithmetic.
      - `initial_state`: `h` or `(h,)`, (batch, units); None gives zeros (or the kept
        states when `stateful`).
      - `deterministic`: False applies the dropouts and needs a "dropout" rng.

    Returns:
      output (jax.Array | tuple[jax.Array, ...]): (batch, time, units) with `return_sequences`, else
        (batch, units); with `return_state`, `(output, h)`, h (batch, units). The dtype is
        `dtype` or the promotion of x's and the parameters'.

    Raises:
      ValueError: units < 1, a dropout rate outside [0, 1), an unknown `implementation`,
        "fused" where it does not apply, x not (batch, time, features) or with another
        feature count than at init, a mask not (batch, time), initial states of the wrong
        count or shapes, a stateful layer fed another batch size than at init.
      TypeError: units not an int, x not floating, a float mask.
    """

    recurrent_activation: str | Callable = "sigmoid"
    reset_after: bool = True
    layer_norm: bool = False
    norm_epsilon: float = NORM_EPSILON

    cell_class: ClassVar[type[CellBase]] = GRUCell
    extra_cell_fields: ClassVar[tuple[str, ...]] = ("recurrent_activation", "reset_after",
                                                    "layer_norm", "norm_epsilon")


@register(keras="SimpleRNN", torch="RNN")
class SimpleRNN(CellRNN):
    """Keras 3 `SimpleRNN`: a fully connected recurrent layer over (batch, time, features).

    Each step (`keras/src/layers/rnn/simple_rnn.py`; Elman, 1990):
    `h' = act(x @ kernel + h @ recurrent_kernel + bias)`, and the output is h'.
    Parameters: `kernel` (features, units), `recurrent_kernel` (units, units), `bias`
    (units,).

    Attributes:
      units: int >= 1, the width of h and the output.
      activation: a Keras name ("tanh", "sigmoid", "relu", "linear", "elu", "gelu",
        "hard_sigmoid", "softsign", "swish", "silu") or a callable. Default "tanh".
      use_bias: bool, whether the layer has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel`. Default
        `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal`
        (Keras' `recurrent_initializer`).
      bias_init: initializer of `bias`. Default zeros (Keras' `bias_initializer`).
      return_sequences: bool. False (default): return the last output, (batch, units);
        True: every step's output, (batch, time, units).
      return_state: bool. True: return `(output, output, h)`. Default False.
      go_backwards: bool. True: process the sequence from its last step to its first and
        return the outputs in that processing (reversed) order, as Keras. Default False.
      unroll: False (default: a loop), True (every step unrolled: faster for short
        sequences, a larger program) or an int k >= 1 (k steps per loop iteration).
      dropout: float in [0, 1), the fraction of the input features dropped, one mask per
        sequence for every step (Keras); only with `deterministic=False`. Default 0.
      recurrent_dropout: float in [0, 1), the fraction of h dropped where it enters the
        recurrent product (one mask per sequence; the carried h is not dropped). Default 0.
      stateful: bool. True: the final states of each call are kept in the collection
        "rnn_state" (one row per sample; the batch size is fixed by `init`) and start the
        next call; apply with `mutable=["rnn_state"]` (`fit` does), zero them with
        `jaxseq.reset_states`. An explicit `initial_state` wins. Default False.
      zero_output_for_mask: bool. True: masked steps output zeros instead of repeating the
        previous output (Keras' `Bidirectional` sets it). Default False.
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.
      implementation: "auto" (default), "scan" or "fused". "scan": `lax.scan` of the step,
        the input projection taken for all steps in one product before the loop. "fused":
        one `jax.custom_jvp` over the layer whose reverse mode takes the weight gradients
        out of the loop (`jaxseq.fused`); it supports the activations tanh, sigmoid, linear
        and relu. "auto": "fused" where it supports the layer, else "scan". Both
        differentiate in forward mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) and
        reverse mode, to any order.
      remat: False (default), True or an int k >= 1: gradient checkpointing over time
        (`jaxseq.remat`): segments of ceil(sqrt(time)) steps (True) or k steps, only the
        states between segments kept for the backward pass, one segment recomputed at a time
        (about one more forward pass). Same outputs, gradients equal to float rounding.

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`
      (see `jaxseq.RNN.__call__`):

      - `x`: (batch, time, features) floating array (NumPy, JAX or a nested list).
      - `mask`: optional (batch, time) bool or int, True at real steps. As Keras 3, a masked
        step keeps the states and repeats the previous output; a fully masked row returns its
        initial state; values under the mask (NaN included) never reach the arithmetic.
      - `initial_state`: `h` or `(h,)`, (batch, units); None gives zeros (or the kept
        states when `stateful`).
      - `deterministic`: False applies the dropouts and needs a "dropout" rng.

    Returns:
      output (jax.Array | tuple[jax.Array, ...]): (batch, time, units) with `return_sequences`, else
        (batch, units); with `return_state`, `(output, h)`, h (batch, units). The dtype is
        `dtype` or the promotion of x's and the parameters'.

    Raises:
      ValueError: units < 1, a dropout rate outside [0, 1), an unknown `implementation`,
        "fused" where it does not apply, x not (batch, time, features) or with another
        feature count than at init, a mask not (batch, time), initial states of the wrong
        count or shapes, a stateful layer fed another batch size than at init.
      TypeError: units not an int, x not floating, a float mask.
    """

    cell_class: ClassVar[type[CellBase]] = SimpleRNNCell
