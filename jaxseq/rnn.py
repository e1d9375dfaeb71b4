"""The sequence-layer base: `RNN` owns everything around a recurrence; a subclass plugs in the
recurrence itself. Semantics: Keras 3's `keras.layers.RNN` (`keras/src/layers/rnn/rnn.py`),
which owns masks, states, direction and the return flags for `LSTM`, `GRU`, `SimpleRNN` and
`ConvLSTM`, the cells supplying the step.

How a layer runs (b = batch, t = time, S = the other axes of a step's input and states):

1. checks, before any tracing: the configuration, x (b, t, *S), the mask (b, t), the
   implementation (`resolve_implementation`) and the initial states;
2. the parameters (the subclass's, in Keras' names and layout) and the computation dtype;
3. the initial states: `initial_state`, else the kept ones (`stateful`), else the default;
4. dropout masks, drawn once per call (Keras: one mask per sequence, the same at every step);
5. padded steps selected away (x where the mask holds, zeros elsewhere) before any arithmetic,
   so padding (NaN included) reaches neither values nor gradients;
6. the subclass's `recurrence` for the implementation chosen on the platform the program is
   lowered for; with `remat`, once per checkpointed segment of time (`jaxseq.remat`);
7. `stateful`: the final states kept; the output: every step's output in processing order
   (reversed time with `go_backwards`, as Keras) or the last one (zeros where the last
   processed step is masked, with `zero_output_for_mask`); with `return_state`, the final
   states after it.

Masks follow Keras 3: a masked step keeps every state and repeats the previous output, or
outputs zeros with `zero_output_for_mask` (what `Bidirectional` sets when returning sequences);
a fully masked row returns its initial states. The recurrences apply that rule per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import contracts, remat, tuning
from jaxseq.typing import STATE_COLLECTION, Array, Mask, States

__all__ = ["RNN", "dropout_mask", "resolve_implementation", "unroll_steps"]

PLATFORMS = ("cpu", "default")  # `jax.lax.platform_dependent`'s branches that jaxseq tells apart


def dropout_mask(module: nn.Module, rate: float, shape: Sequence[int], dtype) -> Array:
    """An inverted-dropout mask of `shape`: 0 with probability `rate`, else 1 / (1 - rate), from
    `module`'s "dropout" rng. The layers draw theirs once per call (Keras)."""
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, tuple(shape))
    return jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)


def unroll_steps(unroll: bool | int, time: int) -> int:
    """The steps per loop iteration for a layer's `unroll` over `time` steps: True unrolls every
    step, False takes `tuning.AUTO_UNROLL`, an int k takes k; always within [1, time]."""
    if unroll is True:
        steps = time
    elif isinstance(unroll, bool) or int(unroll) <= 0:
        steps = tuning.AUTO_UNROLL
    else:
        steps = int(unroll)
    return max(1, min(steps, time))


def resolve_implementation(layer: RNN, platform: str) -> str:
    """The implementation `layer` runs on `platform` ("cpu", or "default" for every other).

    The one place where `implementation` is read: a name from `layer.implementations` runs as
    asked (a ValueError when it cannot run this configuration, naming one that can); "auto"
    takes the first name of `tuning.AUTO_IMPLEMENTATIONS[layer.auto_family][platform]`, then of
    `layer.implementations`, that supports the configuration (as recurrentgemma's
    `resolve_scan_type` resolves its AUTO).

    Raises:
      ValueError: an unknown name (listing the layer's choices), or a forced one that does not
        support the layer's configuration.
    """
    where = type(layer).__name__
    requested, argument = layer.requested_implementation()
    contracts.check_choice(requested, ("auto", *layer.implementations), argument, where)
    runs = [n for n in layer.implementations if layer.implementation_unsupported(n) is None]
    if requested != "auto":
        if requested not in runs:
            raise ValueError(
                f"{where}({argument}={requested!r}) does not support "
                f"{layer.implementation_unsupported(requested)}; use {argument}={runs[0]!r} "
                "(or 'auto', which falls back to it).")
        return requested
    family = tuning.AUTO_IMPLEMENTATIONS.get(layer.auto_family, {})
    preferred = family.get(platform, family.get("default", ()))
    return next(n for n in (*preferred, *runs) if n in runs)


class RNN(nn.Module):
    """The base of jaxseq's recurrent layers: `LSTM`, `GRU`, `SimpleRNN` (through
    `jaxseq.cell_rnn.CellRNN`), `MinGRU`, `MinLSTM`, `ConvLSTM1D` and `ConvLSTM2D`.

    It owns what Keras 3's `keras.layers.RNN` owns (`keras/src/layers/rnn/rnn.py`): input
    checks, masks, initial and kept (`stateful`) states, direction, the return flags, the
    choice of implementation, checkpointing over time and the drawing of dropout masks. A
    subclass declares its parameters and plugs in its recurrence through the `nn.nowrap`
    hooks below (`create_params`, `state_shapes`, `recurrence`, ...); the module docstring
    gives the order in which they run. Use the subclasses: `RNN` itself has no recurrence.

    Attributes:
      return_sequences: bool. False (default): return the last output, (batch, *S');
        True: the output of every step, (batch, time, *S').
      return_state: bool. True: return `(output, *final_states)` (LSTM `(output, h, c)`).
        Default False.
      go_backwards: bool. True: process the sequence from its last step to its first and,
        as Keras, return the sequence of outputs in that processing (reversed) order.
        Default False.
      stateful: bool, Keras' `stateful=True`. The final states of each call are kept in the
        flax collection "rnn_state" (`{"states": (h, ...)}`, one row per sample, so the batch
        size is fixed by `init`; zeros at init) and are the next call's initial states; apply
        with `mutable=["rnn_state"]` to carry them (`fit` does) and `jaxseq.reset_states` to
        zero them. An explicit `initial_state` takes precedence. Default False.
      zero_output_for_mask: bool. False (default): a masked step repeats the previous output;
        True: it outputs zeros (what Keras' `Bidirectional` sets when it returns sequences).
      dtype: the computation dtype; None (default) promotes the input's and the parameters'
        dtypes (`jnp.result_type`), so bfloat16 inputs with float32 parameters compute in
        float32.
      param_dtype: the parameters' dtype. Default float32.
      implementation: "auto" (default) or one of the subclass's `implementations` (their
        requirements are documented on each layer); "auto" takes, on the platform the program
        is lowered for, the preferred one that supports the configuration
        (`resolve_implementation`, `jaxseq.tuning.AUTO_IMPLEMENTATIONS`). Every choice gives
        the same values to float rounding, and differentiates in forward mode (`jax.jvp`,
        `jax.jacfwd`, `jax.linearize`) and reverse mode.
      remat: gradient checkpointing over time (`jaxseq.remat`): False (default) keeps every
        step's residuals for the backward pass (memory linear in time); True cuts the
        sequence into segments of ceil(sqrt(time)) steps, a positive int k into segments of k
        steps, and keeps only the states between segments, recomputing one segment at a time
        in the backward pass (about one more forward pass). Same outputs; gradients equal to
        float rounding. k >= time runs unsegmented. Anything else is a ValueError.

    Raises:
      ValueError: from the call: an unknown or unsupported `implementation`, a bad `remat`,
        a bad input shape (see `__call__`), the subclass's configuration errors.
      TypeError: from the call: a non-floating x, a float mask.
      NotImplementedError: calling `RNN` itself.
    """

    _: dataclasses.KW_ONLY
    return_sequences: bool = False
    return_state: bool = False
    go_backwards: bool = False
    stateful: bool = False
    zero_output_for_mask: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    implementation: str = "auto"
    remat: bool | int = False

    # What a subclass declares besides its fields and hooks.
    state_names: ClassVar[tuple[str, ...]] = ("h",)  # the states, in `return_state` order
    implementations: ClassVar[tuple[str, ...]] = ("scan",)  # the choices besides "auto"
    auto_family: ClassVar[str | None] = None  # its row of `tuning.AUTO_IMPLEMENTATIONS`

    # -- hooks ------------------------------------------------------------------------------
    @nn.nowrap
    def check_config(self) -> None:
        """Raise ValueError / TypeError for fields that cannot work (before any tracing)."""

    @nn.nowrap
    def step_mask(self, x, mask):
        """The (batch, time) mask from the `mask` the layer was given (ConvLSTM also takes a
        mask per position and reduces it)."""
        return mask

    @nn.nowrap
    def check_input(self, x) -> tuple[int, int]:
        """Check x, (batch, time, features) floating with the feature count the parameters
        were built for; return (batch, time)."""
        where = type(self).__name__
        batch, time, features = contracts.check_sequence_input(x, where)
        if self.has_variable("params", "kernel"):  # built before: same feature count?
            contracts.check_features(features, self.get_variable("params", "kernel").shape[0],
                                     where)
        return batch, time

    @nn.nowrap
    def create_params(self, input_shape: tuple[int, ...]) -> dict[str, Array]:
        """Declare the parameters (`self.param`) for inputs of `input_shape`; return them."""
        raise NotImplementedError(f"{type(self).__name__} declares no parameters; use a "
                                  "subclass of RNN (LSTM, GRU, SimpleRNN, MinGRU, ...).")

    @nn.nowrap
    def state_shapes(self, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        """The shape of each state, in `state_names` order, for inputs of `input_shape`."""
        raise NotImplementedError(f"{type(self).__name__} has no states; use a subclass.")

    @nn.nowrap
    def state_spelling(self) -> str:
        """A state's shape in named axes, for error messages."""
        return "(batch, units)"

    @nn.nowrap
    def default_states(self, shapes, dtype) -> tuple[Array, ...]:
        """The initial states when none are given: zeros (as Keras)."""
        return tuple(jnp.zeros(s, dtype) for s in shapes)

    @nn.nowrap
    def check_initial_state(self, states: tuple) -> None:
        """Checks of given initial states beyond their count and shapes (none here)."""

    @nn.nowrap
    def dropout_masks(self, input_shape: tuple[int, ...], shapes, dtype) -> Any:
        """The dropout masks of one training call (`dropout_mask`), handed to `recurrence`;
        None (default) for a layer without dropout."""
        return None

    @nn.nowrap
    def requested_implementation(self) -> tuple[str, str]:
        """(the implementation asked for, the argument that asked for it)."""
        return self.implementation, "implementation"

    @nn.nowrap
    def implementation_unsupported(self, name: str) -> str | None:
        """Why implementation `name` cannot run this configuration, or None when it can."""
        return None

    @nn.nowrap
    def recurrence(self, implementation: str, params, states: tuple[Array, ...], x: Array,
                   mask: Array | None, noise) -> tuple[tuple[Array, ...], Array | None]:
        """The recurrence over x (b, t, *S) in time order, its padded steps already zero, from
        `states`; mask (b, t) bool or None; noise: what `dropout_masks` returned, or None.
        Returns (final_states, ys): ys (b, t, *S') every step's output in processing order
        (masked steps as the module docstring says), or None without `return_sequences`."""
        raise NotImplementedError(f"{type(self).__name__} has no recurrence; use a subclass.")

    # -- the call ---------------------------------------------------------------------------
    @nn.compact
    def __call__(self, x, *, mask: Mask | None = None, initial_state: States = None,
                 deterministic: bool = True):
        """Run the layer over a batch of sequences.

        Args:
          x: (batch, time, features) floating array (float32, bfloat16, ...; NumPy, JAX or a
            nested list), time >= 1; (batch, time, *spatial, channels) for ConvLSTM. The
            feature count must stay the one the layer was initialized with.
          mask: optional (batch, time) bool or integer array, True (nonzero) at real steps.
            As Keras 3: a masked step keeps every state and repeats the previous output
            (zeros with `zero_output_for_mask`); values at masked steps (NaN included) never
            reach the arithmetic; a fully masked row returns its initial state.
          initial_state: optional initial states, each (batch, state width): LSTM `(h, c)`,
            GRU, SimpleRNN, MinGRU and MinLSTM `h` or `(h,)`. None: the default (zeros), or
            the kept states when `stateful`.
          deterministic: True (default) turns dropout off; False applies the layer's dropout
            and needs an rng named "dropout" (`rngs={"dropout": key}`).

        Returns:
          output (jax.Array | tuple[jax.Array, ...]): the output, (batch, time, units) with
            `return_sequences` (in processing order: reversed time with `go_backwards`), else
            the last output (batch, units); with `return_state`, the tuple `(output,
            *final_states)`, LSTM states in Keras order h, c, each (batch, units). The dtype is
            `dtype`, or the promotion of x's and the parameters' dtypes.

        Raises:
          ValueError: x not (batch, time, features), an empty time or feature axis, x's
            feature count differing from the initialized one, a mask not (batch, time), an
            initial state of the wrong count or shape, a stateful layer fed another batch
            size than at init; the configuration errors listed on the class.
          TypeError: x not floating, a float mask, `units` not an int.
        """
        where = type(self).__name__
        self.check_config()
        remat.check_remat(self.remat, where)
        mask = self.step_mask(x, mask)
        batch, time = self.check_input(x)
        if mask is not None:
            contracts.check_mask(mask, batch, time, where)
        chosen = tuple(resolve_implementation(self, p) for p in PLATFORMS)
        input_shape = contracts.shape_of(x)
        shapes = self.state_shapes(input_shape)
        given = self._given_states(initial_state, shapes)
        params = self.create_params(input_shape)

        x = jnp.asarray(x)
        dtype = self.dtype or jnp.result_type(x, *jax.tree.leaves(params))
        params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
        x = jnp.asarray(x, dtype)
        carried = None
        if given is not None:
            states = tuple(jnp.asarray(s).astype(dtype) for s in given)
        elif self.stateful:
            carried = self._carried(shapes, dtype)
            states = tuple(jnp.asarray(v, dtype) for v in carried.value)
        else:
            states = self.default_states(shapes, dtype)
        noise = None if deterministic else self.dropout_masks(input_shape, shapes, dtype)

        m = None if mask is None else jnp.asarray(mask).astype(bool)
        if m is not None:  # padding may hold anything (NaN, Inf): select it away first
            x = jnp.where(m.reshape(m.shape + (1,) * (x.ndim - 2)), x, jnp.zeros_like(x))

        def run(states, xm):
            xs, ms = xm
            if chosen[0] == chosen[1]:
                return self.recurrence(chosen[0], params, states, xs, ms, noise)
            return jax.lax.platform_dependent(  # by the platform the program is lowered for
                cpu=lambda: self.recurrence(chosen[0], params, states, xs, ms, noise),
                default=lambda: self.recurrence(chosen[1], params, states, xs, ms, noise))

        seg = remat.segment_length(self.remat, time)
        if seg is None:
            final, ys = run(states, (x, m))
        else:
            final, ys = remat.segmented(run, states, (x, m), seg, reverse=self.go_backwards,
                                        emit=self.return_sequences)
        if carried is not None and self.is_mutable_collection(STATE_COLLECTION) and (
                not self.is_initializing()):  # init keeps zeros, as Keras builds them
            carried.value = tuple(jax.lax.stop_gradient(f) for f in final)
        return self._finish(final, ys, m, shapes, time)

    # -- the plumbing -----------------------------------------------------------------------
    @nn.nowrap
    def _given_states(self, initial_state, shapes) -> tuple | None:
        if initial_state is None:
            return None
        states = tuple(initial_state) if isinstance(initial_state, (tuple, list)) else (
            initial_state,)
        contracts.check_state_shapes(states, shapes, self.state_names, type(self).__name__,
                                     spelled=self.state_spelling())
        self.check_initial_state(states)
        return states

    def _carried(self, shapes, dtype):
        """The "rnn_state" variable of a stateful layer; its batch must be this call's."""
        where = type(self).__name__
        carried = self.variable(STATE_COLLECTION, "states",
                                lambda: tuple(jnp.zeros(s, dtype) for s in shapes))
        kept, batch = contracts.shape_of(carried.value[0])[0], shapes[0][0]
        if kept != batch:
            raise ValueError(
                f"{where}(stateful=True) keeps one state per sample for batches of {kept} "
                f"(the batch size at init); got a batch of {batch}. Feed batches of {kept} "
                "(fit: batch_size, with the sample count a multiple of it), or init with a "
                f"batch of {batch}.")
        return carried

    @nn.nowrap
    def _finish(self, final, ys, m, shapes, time: int):
        """The layer's return value from the final states and the outputs ys in processing
        order (None without return_sequences)."""
        out_shape = shapes[0]
        if self.return_sequences:
            output = ys
            chex.assert_shape(output, (out_shape[0], time, *out_shape[1:]))
        else:
            output = final[0]
            if self.zero_output_for_mask and m is not None:  # last processed step masked
                last = m[:, 0] if self.go_backwards else m[:, -1]
                keep = last.reshape(last.shape + (1,) * (output.ndim - 1))
                output = jnp.where(keep, output, jnp.zeros_like(output))
            chex.assert_shape(output, out_shape)
        return (output, *final) if self.return_state else output
