"""minGRU and minLSTM: recurrences without hidden-state gates, solvable by a parallel scan.

Source: Feng, Tung, Ahmed, Bengio, Hajimirsadeghi (2024), "Were RNNs All We Needed?",
arXiv:2410.01201 — section 3 for the definitions, appendix A (pseudocode) for the log-space
form. Shapes: b=batch, t=time, f=features, u=units.

The gates see only the input x_t, never h_{t-1}, so every step is h_t = a_t ⊙ h_{t-1} + b_t
with (a_t, b_t) known for all t at once from one product `x @ kernel + bias` (b, t, k·u):

  minGRU (k=2, kernel columns z | h):  z_t = σ(k_z), h̃_t = cand(k_h),
      a_t = 1 - z_t, b_t = z_t ⊙ h̃_t;
  minLSTM (k=3, kernel columns f | i | h):  f_t = σ(k_f), i_t = σ(k_i), h̃_t = cand(k_h),
      a_t = f_t / (f_t + i_t), b_t = i_t / (f_t + i_t) ⊙ h̃_t,

with cand = g (the log-space form, `log_space=True`: g(v) = v + 0.5 for v >= 0, σ(v) below,
so h̃ > 0 and, from a positive h_0, every h_t > 0) or cand = identity (`log_space=False`: the
plain form, signed states). In log space the coefficients come as logarithms, as in the
paper's appendix: log(1 - z) = -softplus(k_z), log z = k_z - softplus(k_z); for minLSTM, with
d = log i - log f = softplus(-k_f) - softplus(-k_i): log a = -softplus(d), log(i / (f + i)) =
d - softplus(d). Outside log space they are sigmoids: 1 - z = σ(-k_z), a = σ(-d), i' = σ(d).

`implementation` chooses how the recurrence is solved; both compute the same function:
  "parallel": `jax.lax.associative_scan` over time. log_space=True: in log space, on pairs
      (log a, log b) with (la1, lb1)∘(la2, lb2) = (la1 + la2, logaddexp(la2 + lb1, lb2)), so
      log h_t = logaddexp(log a_t + log h_{t-1}, log b_t). That is the paper's appendix
      recurrence combined pairwise instead of as a* = cumsum(log a), log h = a* +
      logcumsumexp(log b - a*): a similar cost, but the paper's subtraction of a* (which
      grows like t) loses float32 precision: 1.4e-4 to 5.7e-4 relative at t=1000 for gate
      pre-activations of standard deviation 1 to 6, against 4e-7 to 1.6e-6 pairwise (against
      a float64 loop). log_space=False: the linear-recurrence pairs
      (a1, b1)∘(a2, b2) = (a1·a2, a2·b1 + b2), no logarithm.
  "sequential": `jax.lax.scan` of h_t = a_t ⊙ h_{t-1} + b_t, one step at a time (what
      step-by-step inference runs), without logarithms for either form; its derivatives are
      `sequential_scan`'s custom JVP, the same linear recurrence on the tangents, whose
      transpose (reverse mode) is the adjoint recurrence, one reverse scan.
  "auto" (default): "sequential" when the program is lowered for CPU, "parallel" otherwise
      (`jaxseq.tuning.AUTO_IMPLEMENTATIONS["minimal"]`, chosen by measurement; the associative
      scan's O(log T) depth is meant for accelerators).

The layers are `jaxseq.RNN`s: the base owns the checks, masks, direction, initial and kept
states, the return flags and `remat`; `MinimalRNN.recurrence` is the solve above.

Masks (Keras 3): a masked step has a_t = 1, b_t = 0 (log a = 0, log b = the dtype's lowest
finite number, whose exponential is exactly 0), chosen with `jnp.where` on coefficients built
from zeroed inputs, so padding (even NaN) and no -inf or NaN reach values or gradients. The
state is kept and the previous output repeated; a fully masked row returns the initial state.
`zero_output_for_mask=True` outputs zeros at masked steps (Bidirectional sets it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import contracts
from jaxseq.cells import matmul_last, with_leading_axes
from jaxseq.linear_scan import g, log_g, parallel_scan, sequential_scan, sigmoid_pair
from jaxseq.registry import register
from jaxseq.rnn import RNN
from jaxseq.typing import Array

Initializer = Callable[..., Array]


class MinimalRNN(RNN):
    """The base of `MinGRU` and `MinLSTM`: an `RNN` whose recurrence is the linear scan of the
    module docstring; subclasses give the gates' coefficients. The fields, call, outputs and
    errors are documented on `MinGRU` and `MinLSTM`."""

    units: int
    _: dataclasses.KW_ONLY
    log_space: bool = True
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    bias_init: Initializer = nn.initializers.zeros_init()
    mode: str = "auto"

    gates: ClassVar[int] = 0
    implementations: ClassVar[tuple[str, ...]] = ("parallel", "sequential")
    auto_family: ClassVar[str] = "minimal"

    @nn.nowrap
    def coefficients(self, k: Array) -> tuple[Array, Array, Array]:
        """(a, input gate, candidate pre-activation), each (..., u), from the projected
        inputs k (..., gates·u): b = input gate ⊙ cand(candidate pre-activation)."""
        raise NotImplementedError

    @nn.nowrap
    def log_coefficients(self, k: Array) -> tuple[Array, Array, Array]:
        """`coefficients` with the logarithms of a and of the input gate."""
        raise NotImplementedError

    @nn.nowrap
    def check_config(self) -> None:
        where = type(self).__name__
        contracts.check_positive_int(self.units, "units", where)
        if self.stateful and self.log_space:
            raise ValueError(
                f"{where}(stateful=True) expects log_space=False: `jaxseq.reset_states` zeroes "
                "the kept states, and the log-space form's states must be positive (it starts "
                "from 0.5). Use log_space=False, whose plain form starts from zeros.")

    @nn.nowrap
    def requested_implementation(self) -> tuple[str, str]:
        """`implementation`, or `mode`, its other name (one of the two may be given)."""
        if self.mode == "auto":
            return self.implementation, "implementation"
        if self.implementation not in ("auto", self.mode):
            raise ValueError(
                f"{type(self).__name__} got implementation={self.implementation!r} and "
                f"mode={self.mode!r}; mode is another name for implementation: give one.")
        return self.mode, "mode"

    @nn.nowrap
    def create_params(self, input_shape):
        width = self.gates * self.units
        return {"kernel": self.param("kernel", self.kernel_init, (input_shape[-1], width),
                                     self.param_dtype),
                "bias": self.param("bias", self.bias_init, (width,), self.param_dtype)}

    @nn.nowrap
    def state_shapes(self, input_shape):
        return ((input_shape[0], self.units),)

    @nn.nowrap
    def default_states(self, shapes, dtype):
        """h_0 when none is given: 0.5 = g(0) in log space, zeros in the plain form."""
        return (jnp.full(shapes[0], 0.5 if self.log_space else 0.0, dtype),)

    @nn.nowrap
    def check_initial_state(self, states) -> None:
        """In log space a concrete h_0 must be positive (a traced one is not checked)."""
        h0 = states[0]
        if not self.log_space or isinstance(h0, jax.core.Tracer):
            return
        values = np.asarray(h0)
        if not np.all(values > 0):
            bad = values[~(values > 0)]
            raise ValueError(
                f"{type(self).__name__}(log_space=True) expects initial_state h of shape "
                "(batch, units) with every entry > 0 (the log-space form's states are "
                f"positive; its parallel scan takes log h); got {bad.size} entr"
                f"{'y' if bad.size == 1 else 'ies'} <= 0 or NaN (e.g. {bad.flat[0]}). "
                "Pass a positive state (the default is 0.5), or use log_space=False, "
                "whose plain form accepts signed states.")

    @nn.nowrap
    def _solve(self, implementation: str, k: Array, h0: Array, m: Array | None) -> Array:
        """h (t, b, u) from the projected inputs k (t, b, gates·u), in processing order."""
        keep = None if m is None else m[:, :, None]
        if implementation == "parallel" and self.log_space:
            log_a, log_i, cand = self.log_coefficients(k)
            a, b = log_a, log_i + log_g(cand)
            if keep is not None:  # masked: a = 1, b = 0, as logarithms, all finite
                a = jnp.where(keep, a, jnp.zeros_like(a))
                b = jnp.where(keep, b, jnp.full_like(b, jnp.finfo(b.dtype).min))
            hs = parallel_scan(a, b, h0, log_space=True)
            if m is not None:  # before the first real step h is h0 itself, not exp(log h0)
                time = k.shape[0]
                first = jnp.where(m.any(axis=0), jnp.argmax(m, axis=0), time)  # (b,)
                seen = jnp.arange(time)[:, None] >= first[None, :]  # (t, b)
                hs = jnp.where(seen[:, :, None], hs, h0[None])
            return hs
        a, i, cand = self.coefficients(k)
        b = i * (g(cand) if self.log_space else cand)
        if keep is not None:
            a = jnp.where(keep, a, jnp.ones_like(a))
            b = jnp.where(keep, b, jnp.zeros_like(b))
        return (parallel_scan(a, b, h0, log_space=False) if implementation == "parallel"
                else sequential_scan(a, b, h0))

    @nn.nowrap
    def recurrence(self, implementation, params, states, x, mask, noise):
        """Time-major from here on: (t, b, ...), so the scans need no transposes of
        (t, b, u)."""
        del noise  # no dropout
        (h0,) = states
        xt = jnp.swapaxes(x, 0, 1)
        m = None if mask is None else mask.T
        if self.go_backwards:  # processing order from here on
            xt = jnp.flip(xt, axis=0)
            m = None if m is None else jnp.flip(m, axis=0)
        k = matmul_last(xt, params["kernel"]) + with_leading_axes(params["bias"], 3)
        hs = self._solve(implementation, k, h0, m)  # (t, b, u): all steps at once
        chex.assert_shape(hs, (*xt.shape[:2], self.units))
        ys = None
        if self.return_sequences:
            ys = hs
            if self.zero_output_for_mask and m is not None:
                ys = jnp.where(m[:, :, None], hs, jnp.zeros_like(hs))
            ys = jnp.swapaxes(ys, 0, 1)
        return (hs[-1],), ys


@register
class MinGRU(MinimalRNN):
    """minGRU (Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, 2024, "Were RNNs All We Needed?",
    section 3.1; appendix A for the log-space form): a GRU whose gates see only the input, so
    every step is known at once and the recurrence is a linear scan.

    `z_t = sigmoid(x_t W_z + b_z)`, `h~_t = g(x_t W_h + b_h)` (log space) or `x_t W_h + b_h`
    (plain), `h_t = (1 - z_t) * h_{t-1} + z_t * h~_t`. Parameters: `kernel` (features,
    2 units) and `bias` (2 units,), columns z | h (features * 2u + 2u in all).

    Attributes:
      units: int >= 1, the width of h and the output.
      return_sequences: bool: every step's output, (batch, time, units) (True), or the
        last, (batch, units) (False, default).
      return_state: bool: also return the final h. Default False.
      go_backwards: bool: process the sequence from its end and return the outputs in that
        (reversed) order, as Keras. Default False.
      zero_output_for_mask: bool: masked steps output zeros instead of repeating the previous
        output (`Bidirectional` sets it). Default False.
      stateful: bool, Keras' `stateful=True` (see `jaxseq.RNN`): the final h of each call is
        kept in the collection "rnn_state" and starts the next call; needs
        `log_space=False` (`jaxseq.reset_states` zeroes kept states). Default False.
      implementation: how the recurrence is solved, the same function either way (to float
        rounding): "parallel" (`jax.lax.associative_scan` over time, O(log T) depth; in log
        space with `log_space`), "sequential" (`jax.lax.scan`, one step at a time, with an
        adjoint reverse scan as its backward pass) or "auto" (default: "sequential" when the
        program is lowered for CPU, where it is faster and compiles faster, "parallel" on
        GPU/TPU). Every choice supports every configuration and differentiates in forward
        mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) and reverse mode.
      mode: another name for `implementation`, accepted as well (give one of the two).
        Default "auto".
      remat: False (default), True or an int k >= 1: gradient checkpointing over time, as
        for `jaxseq.RNN` (segments of ceil(sqrt(time)) or k steps). Same outputs.
      log_space: bool. True (default): the paper's log-space form: candidate g(v) (v + 0.5
        for v >= 0, sigmoid(v) below), positive states, the parallel mode on logarithms.
        False: the plain form: identity candidate, signed states, no logarithms.
      kernel_init: initializer of `kernel`. Default `glorot_uniform`.
      bias_init: initializer of `bias`. Default zeros.
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`:

      - `x`: (batch, time, features) floating (NumPy, JAX or a nested list).
      - `mask`: optional (batch, time) bool or int, True at real steps: as Keras 3, a masked
        step keeps h and repeats the previous output; a fully masked row returns the initial
        state; padding values (NaN included) never reach values or gradients.
      - `initial_state`: h or `(h,)`, (batch, units): the state itself (what `return_state`
        returns, so it continues a sequence). With `log_space=True` every entry must be > 0
        (a concrete array with an entry <= 0 or NaN raises ValueError; a traced one is not
        checked). Default: 0.5 everywhere in log space (g(0), the paper's start), zeros in
        the plain form (as Keras).
      - `deterministic`: accepted for the common layer API; these layers have no dropout.

    Returns:
      output (jax.Array | tuple[jax.Array, jax.Array]): (batch, time, units) with
        `return_sequences`, else (batch, units); with `return_state`, `(output, h)`, h
        (batch, units). The dtype is `dtype` or the promotion of x's and the parameters'.

    Raises:
      ValueError: units < 1, an unknown implementation (or mode), x not (batch, time,
        features) or with another feature count than at init, a mask not (batch, time), an
        initial state of the wrong shape (or not positive in log space), `stateful` with
        `log_space`, a bad `remat`.
      TypeError: units not an int, x not floating, a float mask.
    """

    gates: ClassVar[int] = 2

    @nn.nowrap
    def coefficients(self, k):
        kz, kh = k[..., :self.units], k[..., self.units:]
        z, one_minus_z = sigmoid_pair(kz)
        return one_minus_z, z, kh

    @nn.nowrap
    def log_coefficients(self, k):
        kz, kh = k[..., :self.units], k[..., self.units:]
        sp = jax.nn.softplus(kz)
        return -sp, kz - sp, kh  # log(1 - z) = -softplus(k_z), log z = k_z - softplus(k_z)


@register
class MinLSTM(MinimalRNN):
    """minLSTM (Feng, Tung, Ahmed, Bengio, Hajimirsadeghi, 2024, "Were RNNs All We Needed?",
    section 3.2 with the length-independent normalization; appendix A for log space): an
    LSTM whose gates see only the input, solved as a linear scan.

    `f_t = sigmoid(x_t W_f + b_f)`, `i_t = sigmoid(x_t W_i + b_i)`, `f'_t = f_t / (f_t +
    i_t)`, `i'_t = i_t / (f_t + i_t)`, `h~_t = g(x_t W_h + b_h)` (log space) or `x_t W_h +
    b_h` (plain), `h_t = f'_t * h_{t-1} + i'_t * h~_t`. Parameters: `kernel` (features,
    3 units) and `bias` (3 units,), columns f | i | h.

    Attributes:
      units: int >= 1, the width of h and the output.
      return_sequences: bool: every step's output, (batch, time, units) (True), or the
        last, (batch, units) (False, default).
      return_state: bool: also return the final h. Default False.
      go_backwards: bool: process the sequence from its end and return the outputs in that
        (reversed) order, as Keras. Default False.
      zero_output_for_mask: bool: masked steps output zeros instead of repeating the previous
        output (`Bidirectional` sets it). Default False.
      stateful: bool, Keras' `stateful=True` (see `jaxseq.RNN`): the final h of each call is
        kept in the collection "rnn_state" and starts the next call; needs
        `log_space=False` (`jaxseq.reset_states` zeroes kept states). Default False.
      implementation: how the recurrence is solved, the same function either way (to float
        rounding): "parallel" (`jax.lax.associative_scan` over time, O(log T) depth; in log
        space with `log_space`), "sequential" (`jax.lax.scan`, one step at a time, with an
        adjoint reverse scan as its backward pass) or "auto" (default: "sequential" when the
        program is lowered for CPU, where it is faster and compiles faster, "parallel" on
        GPU/TPU). Every choice supports every configuration and differentiates in forward
        mode (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) and reverse mode.
      mode: another name for `implementation`, accepted as well (give one of the two).
        Default "auto".
      remat: False (default), True or an int k >= 1: gradient checkpointing over time, as
        for `jaxseq.RNN` (segments of ceil(sqrt(time)) or k steps). Same outputs.
      log_space: bool. True (default): the paper's log-space form: candidate g(v) (v + 0.5
        for v >= 0, sigmoid(v) below), positive states, the parallel mode on logarithms.
        False: the plain form: identity candidate, signed states, no logarithms.
      kernel_init: initializer of `kernel`. Default `glorot_uniform`.
      bias_init: initializer of `bias`. Default zeros.
      dtype: computation dtype; None (default) promotes x's and the parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.

    Call arguments:
      `layer.apply(variables, x, *, mask=None, initial_state=None, deterministic=True)`:

      - `x`: (batch, time, features) floating (NumPy, JAX or a nested list).
      - `mask`: optional (batch, time) bool or int, True at real steps: as Keras 3, a masked
        step keeps h and repeats the previous output; a fully masked row returns the initial
        state; padding values (NaN included) never reach values or gradients.
      - `initial_state`: h or `(h,)`, (batch, units): the state itself (what `return_state`
        returns, so it continues a sequence). With `log_space=True` every entry must be > 0
        (a concrete array with an entry <= 0 or NaN raises ValueError; a traced one is not
        checked). Default: 0.5 everywhere in log space (g(0), the paper's start), zeros in
        the plain form (as Keras).
      - `deterministic`: accepted for the common layer API; these layers have no dropout.

    Returns:
      output (jax.Array | tuple[jax.Array, jax.Array]): (batch, time, units) with
        `return_sequences`, else (batch, units); with `return_state`, `(output, h)`, h
        (batch, units). The dtype is `dtype` or the promotion of x's and the parameters'.

    Raises:
      ValueError: units < 1, an unknown implementation (or mode), x not (batch, time,
        features) or with another feature count than at init, a mask not (batch, time), an
        initial state of the wrong shape (or not positive in log space), `stateful` with
        `log_space`, a bad `remat`.
      TypeError: units not an int, x not floating, a float mask.
    """

    gates: ClassVar[int] = 3

    @nn.nowrap
    def _split(self, k):
        """(d = log i - log f, candidate pre-activation): f' = σ(-d), i' = σ(d)."""
        u = self.units
        kf, ki, kh = k[..., :u], k[..., u:2 * u], k[..., 2 * u:]
        return jax.nn.softplus(-kf) - jax.nn.softplus(-ki), kh  # log σ(v) = -jax.nn.softplus(-v)

    @nn.nowrap
    def coefficients(self, k):
        d, kh = self._split(k)
        i, f = sigmoid_pair(d)
        return f, i, kh

    @nn.nowrap
    def log_coefficients(self, k):
        d, kh = self._split(k)
        sp = jax.nn.softplus(d)
        return -sp, d - sp, kh
