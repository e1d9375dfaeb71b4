"""One time step of LSTM, GRU and SimpleRNN, in the Keras 3 parameter layout.

A cell is two pure pieces of math plus a parameter spec:

* `project(params, x)`: the input part, `x @ kernel (+ input bias)`. It has no time dependence,
  so the layers compute it for every time step in one matrix product before the scan.
* `step(params, states, xp)`: the recurrent part of one step, given the projected input `xp`.

The cell Modules (`LSTMCell`, ...) declare the same parameters as the layers and chain the two
pieces, so a cell can be driven by hand, one step at a time, or by `flax.linen.RNN`.

Layouts (f = input features, u = units), identical to Keras 3:
  LSTM       kernel (f, 4u), recurrent_kernel (u, 4u), bias (4u,);   gates i, f, c, o
  GRU        kernel (f, 3u), recurrent_kernel (u, 3u), bias (2, 3u) with reset_after=True
             (row 0 input bias, row 1 recurrent bias) or (3u,) with reset_after=False; gates z, r, h
  SimpleRNN  kernel (f, u),  recurrent_kernel (u, u),  bias (u,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import contracts
from jaxseq.activations import get_activation
from jaxseq.initializers import forget_bias_init, in_float32
from jaxseq.normalization import NORM_EPSILON, check_norm_config, layer_norm, norm_specs
from jaxseq.products import matmul
from jaxseq.typing import Array, PRNGKey

Initializer = Callable[..., Array]

def with_leading_axes(v: Array, ndim: int) -> Array:
    """`v` with unit axes in front, up to `ndim` axes, so it broadcasts against an array of
    that rank explicitly (the tests forbid rank promotion)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def matmul_last(x: Array, w: Array, product: Callable = matmul) -> Array:
    """x (..., f) @ w (f, n) -> (..., n) as ONE 2-D `product` on (prod(...), f). XLA:CPU
    computes the gradient of a 3-D product (its weight gradient contracts two axes) 1.5-2x
    slower than that of the same product on the flattened 2-D operand, at every size; every
    input projection goes through here (the fused path's with `products.fused_matmul`)."""
    return product(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])


class CellBase(nn.RNNCellBase):
    """Shared fields and plumbing of `LSTMCell`, `GRUCell`, `SimpleRNNCell` (not used directly):
    one time step as `project(params, x)` (the input part) and `step(params, states, xp)`.

    Attributes:
      units: int >= 1, the width of the state h.
      activation: a Keras activation name ("tanh", "sigmoid", "relu", "linear", "elu",
        "gelu", "hard_sigmoid", "softsign", "swish", "silu") or a callable. Default "tanh".
      use_bias: bool, whether the cell has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel`. Default
        `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal`.
      bias_init: initializer of `bias`. Default zeros.
      dtype: computation dtype; None (default) promotes the inputs' and parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.
    """

    units: int
    activation: str | Callable = "tanh"
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    gates: ClassVar[int] = 1
    state_names: ClassVar[tuple[str, ...]] = ("h",)

    # -- parameter spec -------------------------------------------------------------------
    def bias_spec(self) -> tuple[Initializer, tuple[int, ...]]:
        return self.bias_init, (self.gates * self.units,)

    def param_specs(self, features: int) -> dict[str, tuple[Initializer, tuple[int, ...]]]:
        """Name -> (initializer, shape), in Keras order (kernel, recurrent_kernel, bias)."""
        g = self.gates * self.units
        specs = {
            "kernel": (self.kernel_init, (features, g)),
            "recurrent_kernel": (self.recurrent_kernel_init, (self.units, g)),
        }
        if self.use_bias:
            specs["bias"] = self.bias_spec()
        return specs

    # -- pure math ------------------------------------------------------------------------
    def input_bias(self, params) -> Array | None:
        return params.get("bias") if self.use_bias else None

    def project(self, params, x: Array) -> Array:
        """x (..., f) -> (..., gates*u): the input part of every gate, input bias included."""
        xp = self.normalize(params, "kernel_norm", matmul_last(x, params["kernel"]))
        bias = self.input_bias(params)
        return xp if bias is None else xp + with_leading_axes(bias, xp.ndim)

    def check_config(self, where: str) -> None:
        """Raise ValueError / TypeError, naming `where`, for fields that cannot work."""

    def normalize(self, params, name: str, v: Array) -> Array:
        """`v` layer-normalised with the parameters `{name}_gamma` / `{name}_beta` when the
        cell has `layer_norm=True` (LSTMCell, GRUCell); `v` itself otherwise."""
        if not getattr(self, "layer_norm", False):
            return v
        return layer_norm(v, params[f"{name}_gamma"], params[f"{name}_beta"],
                          self.norm_epsilon)

    def step(
        self, params, states: tuple[Array, ...], xp: Array, rmask: Array | None = None
    ) -> tuple[Array, ...]:
        """New states from old `states` and projected input `xp` (batch, gates*u). `rmask`
        (batch, u), if given, is the recurrent-dropout mask (already scaled): it multiplies h
        where h enters a recurrent matrix product, as in Keras; the carried h is not dropped."""
        raise NotImplementedError

    def state_sizes(self) -> tuple[int, ...]:
        """The width of each state (h first): units, except an LSTM's h with a projection."""
        return (self.units,) * len(self.state_names)

    @property
    def output_size(self) -> int:
        """The width of h, the layer's output."""
        return self.state_sizes()[0]

    def zero_states(self, batch: int, dtype) -> tuple[Array, ...]:
        return tuple(jnp.zeros((batch, n), dtype) for n in self.state_sizes())

    # -- linen Module interface -----------------------------------------------------------
    def create_params(self, module: nn.Module, features: int) -> dict[str, Array]:
        """Declare this cell's parameters on `module` (the cell itself or a layer)."""
        return {
            name: module.param(name, in_float32(init), shape, self.param_dtype)
            for name, (init, shape) in self.param_specs(features).items()
        }

    @nn.compact
    def __call__(self, carry, x: Array):
        """One step. carry: the states (LSTM `(h, c)`, others `h`), each (batch, units);
        x: (batch, features). Returns `(new_carry, h)` as Flax cells do."""
        where = type(self).__name__
        contracts.check_rank_at_least(x, 2, where, "(batch, features)")
        if self.has_variable("params", "kernel"):
            built = self.get_variable("params", "kernel").shape[0]
            contracts.check_features(x.shape[-1], built, where)
        params = self.create_params(self, x.shape[-1])
        states = carry if len(self.state_names) > 1 else (carry,)
        dtype = self.dtype or jnp.result_type(x, *jax.tree.leaves(params))
        params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
        x, *states = (jnp.asarray(a, dtype) for a in (x, *states))
        new = self.step(params, tuple(states), self.project(params, x))
        return (new if len(self.state_names) > 1 else new[0]), new[0]

    @property
    def num_feature_axes(self) -> int:
        """One feature axis, as `flax.linen.RNN` expects of a cell."""
        return 1

    @nn.nowrap
    def initialize_carry(self, rng: PRNGKey, input_shape: tuple[int, ...]):
        """Zero states for inputs of shape (batch, features), as Flax cells do."""
        del rng
        dtype = self.dtype or self.param_dtype
        states = self.zero_states(input_shape[0], dtype)
        return states if len(self.state_names) > 1 else states[0]


class LSTMCell(CellBase):
    """Keras 3 `LSTMCell` (`keras/src/layers/rnn/lstm.py`): one LSTM step, gates i, f, c, o.

    `z = x @ kernel + h @ recurrent_kernel + bias`; `c' = ract(z_f) * c + ract(z_i) *
    act(z_c)`; `h' = ract(z_o) * act(c')`. Parameters: `kernel` (features, 4 units),
    `recurrent_kernel` (units, 4 units), `bias` (4 units,).

    Attributes:
      units: int >= 1, the width of h and c.
      activation: a Keras activation name ("tanh", "sigmoid", "relu", "linear", "elu",
        "gelu", "hard_sigmoid", "softsign", "swish", "silu") or a callable. Default "tanh".
      recurrent_activation: the gates' activation (name or callable). Default "sigmoid".
      unit_forget_bias: bool. True (default): the forget gate's bias starts at one.
      proj_size: int >= 0. p > 0: PyTorch's LSTM with projections (LSTMP; Sak et al.,
        2014): h = (o * act(c)) @ `projection_kernel` (units, p), `recurrent_kernel` (p, 4
        units); h is (batch, p), c (batch, units). Default 0.
      use_bias: bool, whether the cell has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel`. Default
        `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal`.
      bias_init: initializer of `bias`. Default zeros.
      dtype: computation dtype; None (default) promotes the inputs' and parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.
      layer_norm: bool. True: TF-Addons' `LayerNormLSTMCell` (Ba et al., 2016,
        arXiv:1607.06450): `z = LN_k(x @ kernel) + LN_r(h @ recurrent_kernel) + bias`,
        `c' = LN_s(ract(z_f) * c + ract(z_i) * act(z_c))`, `h' = ract(z_o) * act(c')`, the
        carried c the normalised one (`jaxseq.normalization.layer_norm`); extra parameters
        `kernel_norm_gamma/beta` (4 units,), `recurrent_norm_gamma/beta` (4 units,),
        `state_norm_gamma/beta` (units,), gamma 1 and beta 0 at init. Default False.
      norm_epsilon: float > 0, the layer norms' epsilon (TF-Addons' default). Default 1e-3.

    Call arguments:
      `cell.apply(variables, carry, x)`: `carry` the states `(h, c)`, each (batch, units)
      (h (batch, p) with `proj_size`), zeros from `initialize_carry(rng, (batch,
      features))`; `x` (batch, features) floating, one time step.

    Returns:
      (new_carry, h) (tuple): as Flax cells do; h is the new carry's first state.

    Raises:
      ValueError: x of rank < 2, or another feature count than at init; an unknown
        activation name.
    """

    recurrent_activation: str | Callable = "sigmoid"
    unit_forget_bias: bool = True
    proj_size: int = 0
    layer_norm: bool = False
    norm_epsilon: float = NORM_EPSILON

    gates: ClassVar[int] = 4
    state_names: ClassVar[tuple[str, ...]] = ("h", "c")

    def state_sizes(self) -> tuple[int, ...]:
        return (self.proj_size or self.units, self.units)

    def param_specs(self, features: int):
        specs = super().param_specs(features)
        if self.proj_size:
            g = self.gates * self.units
            specs["recurrent_kernel"] = (self.recurrent_kernel_init, (self.proj_size, g))
            specs["projection_kernel"] = (self.kernel_init, (self.units, self.proj_size))
        self.check_config(type(self).__name__)
        if self.layer_norm:
            g = self.gates * self.units
            specs.update(norm_specs({"kernel_norm": g, "recurrent_norm": g,
                                     "state_norm": self.units}))
        return specs

    def check_config(self, where: str) -> None:
        check_norm_config(self.layer_norm, self.norm_epsilon, where)

    def bias_spec(self):
        init = self.bias_init
        if self.unit_forget_bias:
            init = forget_bias_init(self.bias_init, self.units)
        return init, (4 * self.units,)

    def step(self, params, states, xp, rmask=None):
        h, c = states
        act = get_activation(self.activation)
        ract = get_activation(self.recurrent_activation)
        h_rec = h if rmask is None else h * rmask
        hr = self.normalize(params, "recurrent_norm", matmul(h_rec, params["recurrent_kernel"]))
        z = xp + hr
        zi, zf, zc, zo = jnp.split(z, 4, axis=-1)
        c = self.normalize(params, "state_norm", ract(zf) * c + ract(zi) * act(zc))
        h = ract(zo) * act(c)
        if self.proj_size:
            h = matmul(h, params["projection_kernel"])
        return h, c


class GRUCell(CellBase):
    """Keras 3 `GRUCell` (`keras/src/layers/rnn/gru.py`): one GRU step, gates z, r, h.

    `h' = z * h + (1 - z) * act(x W_h + b_h + r * (h U_h + rb_h))` with `reset_after=True`
    (Keras 3's and cuDNN's default: the reset gate multiplies the recurrent product), or
    `act(x W_h + b_h + (r * h) U_h)` with False. Parameters: `kernel` (features, 3 units),
    `recurrent_kernel` (units, 3 units), `bias` (2, 3 units) (input bias row 0, recurrent
    bias row 1) or (3 units,) with `reset_after=False`.

    Attributes:
      units: int >= 1, the width of h.
      activation: a Keras activation name ("tanh", "sigmoid", "relu", "linear", "elu",
        "gelu", "hard_sigmoid", "softsign", "swish", "silu") or a callable. Default "tanh".
      recurrent_activation: the gates' activation (name or callable). Default "sigmoid".
      reset_after: bool, where the reset gate applies (above). Default True.
      use_bias: bool, whether the cell has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel`. Default
        `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal`.
      bias_init: initializer of `bias`. Default zeros.
      dtype: computation dtype; None (default) promotes the inputs' and parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.
      layer_norm: bool (needs `reset_after=True`). True: TF-Addons' LayerNormLSTMCell rule
        (Ba et al., 2016) applied to the GRU: `[x_z, x_r, x_h] = LN_k(x @ kernel) + bias[0]`,
        `[r_z, r_r, r_h] = LN_r(h @ recurrent_kernel) + bias[1]`, then the `reset_after`
        update; extra parameters `kernel_norm_gamma/beta` and `recurrent_norm_gamma/beta`
        (3 units,). Default False.
      norm_epsilon: float > 0, the layer norms' epsilon. Default 1e-3.

    Call arguments:
      `cell.apply(variables, carry, x)`: `carry` the state h (batch, units), zeros from
      `initialize_carry(rng, (batch, features))`; `x` (batch, features) floating.

    Returns:
      (new_carry, h) (tuple): as Flax cells do; both are the new h (batch, units).

    Raises:
      ValueError: x of rank < 2, or another feature count than at init; an unknown
        activation name.
    """

    recurrent_activation: str | Callable = "sigmoid"
    reset_after: bool = True
    layer_norm: bool = False
    norm_epsilon: float = NORM_EPSILON

    gates: ClassVar[int] = 3

    def param_specs(self, features: int):
        specs = super().param_specs(features)
        self.check_config(type(self).__name__)
        if self.layer_norm:
            g = self.gates * self.units
            specs.update(norm_specs({"kernel_norm": g, "recurrent_norm": g}))
        return specs

    def check_config(self, where: str) -> None:
        check_norm_config(self.layer_norm, self.norm_epsilon, where)
        if self.layer_norm and not self.reset_after:
            raise ValueError(
                f"{where}(layer_norm=True) expects reset_after=True (the recurrent projection "
                "is normalised as one (batch, 3 units) product); got reset_after=False.")

    def bias_spec(self):
        shape = (2, 3 * self.units) if self.reset_after else (3 * self.units,)
        return self.bias_init, shape

    def input_bias(self, params):
        if not self.use_bias:
            return None
        return params["bias"][0] if self.reset_after else params["bias"]

    def step(self, params, states, xp, rmask=None):
        (h,) = states
        act = get_activation(self.activation)
        ract = get_activation(self.recurrent_activation)
        rk = params["recurrent_kernel"]
        h_rec = h if rmask is None else h * rmask
        u = self.units
        x_z, x_r, x_h = jnp.split(xp, 3, axis=-1)
        if self.reset_after:
            inner = self.normalize(params, "recurrent_norm", matmul(h_rec, rk))
            if self.use_bias:
                inner = inner + with_leading_axes(params["bias"][1], inner.ndim)
            r_z, r_r, r_h = jnp.split(inner, 3, axis=-1)
            z = ract(x_z + r_z)
            r = ract(x_r + r_r)
            hh = act(x_h + r * r_h)
        else:
            inner = matmul(h_rec, rk[:, : 2 * u])
            r_z, r_r = jnp.split(inner, 2, axis=-1)
            z = ract(x_z + r_z)
            r = ract(x_r + r_r)
            hh = act(x_h + matmul(r * h_rec, rk[:, 2 * u :]))
        return (z * h + (1 - z) * hh,)


class SimpleRNNCell(CellBase):
    """Keras 3 `SimpleRNNCell` (`keras/src/layers/rnn/simple_rnn.py`): one step of
    `h' = act(x @ kernel + bias + h @ recurrent_kernel)`. Parameters: `kernel` (features,
    units), `recurrent_kernel` (units, units), `bias` (units,).

    Attributes:
      units: int >= 1, the width of h.
      activation: a Keras activation name ("tanh", "sigmoid", "relu", "linear", "elu",
        "gelu", "hard_sigmoid", "softsign", "swish", "silu") or a callable. Default "tanh".
      use_bias: bool, whether the cell has a `bias`. Default True.
      kernel_init: initializer `(key, shape, dtype) -> Array` of `kernel`. Default
        `glorot_uniform` (Keras' `kernel_initializer`).
      recurrent_kernel_init: initializer of `recurrent_kernel`. Default `orthogonal`.
      bias_init: initializer of `bias`. Default zeros.
      dtype: computation dtype; None (default) promotes the inputs' and parameters' dtypes.
      param_dtype: dtype of the parameters. Default float32.

    Call arguments:
      `cell.apply(variables, carry, x)`: `carry` the state h (batch, units), zeros from
      `initialize_carry(rng, (batch, features))`; `x` (batch, features) floating.

    Returns:
      (new_carry, h) (tuple): as Flax cells do; both are the new h (batch, units).

    Raises:
      ValueError: x of rank < 2, or another feature count than at init; an unknown
        activation name.
    """

    def step(self, params, states, xp, rmask=None):
        (h,) = states
        h_rec = h if rmask is None else h * rmask
        return (get_activation(self.activation)(xp + matmul(h_rec, params["recurrent_kernel"])),)
