"""The train state, the model call convention, PRNG keys, seeds, and the checks of a state.

`TrainState` is flax's `TrainState` plus `model_state`: every variable collection of the model
other than `params` (`batch_stats` of BatchNorm, the carried state of stateful layers). Its
`apply_fn` is a `ModelFn`: called like `model.apply`, and `ModelFn.forward` is the one place
that decides what the training core passes to a model (mask, `deterministic`, the dropout rng,
which collections are mutable).

Randomness (Keras' "same seed, same run"): `seed -> split_seed -> (init_key, key)`; the init key
draws the initial variables, `key` drives training. Inside the core, an epoch shuffles with
`fold_in(shuffle_key, state.step)` and a step drops out with `fold_in(dropout_key, state.step)`
(`shuffle_key, dropout_key = split(key)`), so randomness follows the optimizer step, as in
flax's examples, and continuing from a state never repeats an earlier epoch's order.
"""

from __future__ import annotations

import dataclasses
from typing import Any, no_type_check

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from jaxseq import contracts
from jaxseq.contracts import as_variables  # noqa: F401  (re-exported)
from jaxseq.training.rows import reset_rows
from jaxseq.typing import STATE_COLLECTION, Array


@dataclasses.dataclass(frozen=True)
class ModelFn:
    """`model.apply`, hashable by the model's value (flax Modules compare by their fields), plus
    `forward`, the call the training core makes."""

    model: nn.Module

    def __call__(self, variables, *args, **kwargs):
        return self.model.apply(variables, *args, **kwargs)

    def forward_masked(self, variables: dict, x, *, mask=None, train: bool = False, key=None):
        """`forward`, plus the mask of the outputs: the one the model reports (a model whose
        `__call__` takes `return_mask`, e.g. `js.Sequential` with `js.Masking`), else `mask`.
        -> (outputs, collections, output mask or None)."""
        if not contracts.accepts(self.model, "return_mask"):
            out, model_state = self.forward(variables, x, mask=mask, train=train, key=key)
            # A model that reports no mask masks no loss (Keras: the output carries no mask),
            # except a jaxseq recurrent layer used alone, whose output keeps the time axis.
            keeps_time = getattr(self.model, "return_sequences", False) or getattr(
                getattr(self.model, "layer", None), "return_sequences", False)
            return out, model_state, mask if keeps_time else None
        (out, out_mask), model_state = self.forward(variables, x, mask=mask, train=train,
                                                    key=key, return_mask=True)
        return out, model_state, out_mask

    def forward(self, variables: dict, x, *, mask=None, train: bool = False, key=None,
                carry_state: bool = False, return_mask: bool = False):
        """-> (outputs, updated non-params collections).

        x: (batch, ...) inputs, or several: a tuple (passed positionally) or a dict (passed as
        keyword arguments) of them (`contracts.call_inputs`); mask: (batch, time) bool or None
        (passed only when given).
        `train`: dropout on (with `key` as the "dropout" rng, for models whose `__call__` takes
        `deterministic`) and every non-params collection mutable; else nothing is mutated but,
        with `carry_state`, the states that stateful layers keep ("rnn_state").
        """
        kwargs: dict[str, Any] = {"return_mask": True} if return_mask else {}
        if mask is not None:
            kwargs["mask"] = mask
        if contracts.accepts(self.model, "deterministic"):
            kwargs["deterministic"] = not train
            if train and key is not None:
                kwargs["rngs"] = {"dropout": key}
        model_state = {k: v for k, v in variables.items() if k != "params"}
        mutable = list(model_state) if train else [
            c for c in model_state if carry_state and c == STATE_COLLECTION]
        if mutable:
            out, updates = contracts.call_inputs(self.model.apply, x, variables,
                                                 mutable=mutable, **kwargs)
            return out, {**model_state, **updates}
        return contracts.call_inputs(self.model.apply, x, variables, **kwargs), model_state


@no_type_check  # flax's field annotations (params: FrozenDict) are narrower than flax accepts
class TrainState(train_state.TrainState):
    """flax's TrainState (`step`, `params`, `opt_state`, `apply_fn`, `tx`) with `model_state`:
    the model's other variable collections, `{collection: tree}` (empty for plain RNNs).
    `variables` is what `model.apply` takes."""

    model_state: Any = struct.field(default_factory=dict)

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.model_state}


DEFAULT_OPTIMIZER = optax.adam(1e-3)  # Keras' Adam default; shared so compilation is reused.


def get_optimizer(optimizer, where: str) -> optax.GradientTransformation:
    """None (one shared `optax.adam(1e-3)`), a Keras name ("adam", "adamw", "sgd", "rmsprop":
    Keras' exact update and defaults, `jaxseq.training.optimizers`), an optax
    GradientTransformation, or an `optax.MultiSteps` (its `.gradient_transformation()`)."""
    from jaxseq.training import optimizers

    if optimizer is None:
        return DEFAULT_OPTIMIZER
    if isinstance(optimizer, str):
        if optimizer.lower() not in optimizers.KERAS_OPTIMIZERS:
            raise ValueError(f"{where} expects optimizer to be one of "
                             f"{tuple(optimizers.KERAS_OPTIMIZERS)} (Keras' names and defaults) "
                             f"or an optax GradientTransformation; got {optimizer!r}.")
        return optimizers.keras_optimizer(optimizer.lower())
    if isinstance(optimizer, optax.MultiSteps):  # optax's docs pass the object itself
        return optimizer.gradient_transformation()  # equal for every call: one compilation
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{where} expects optimizer to be an optax GradientTransformation (e.g. "
                        "optax.adam(1e-3)), a Keras name ('adam', 'adamw', 'sgd', 'rmsprop') or "
                        f"None (Adam 1e-3); got {type(optimizer).__name__}.")
    return optimizer


MAX_REPLICAS = 65_536  # replicas of one program: more is a sign of a wrong argument


def check_seeds(seeds, where: str = "fit_replicas") -> list[int]:
    """`seeds`: an int n (meaning `range(n)`, 1 <= n <= MAX_REPLICAS) or a sequence of distinct
    ints in the int32 range -> the list of seeds; else TypeError / ValueError naming seeds."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        contracts.check_positive_int(seeds, "seeds (an int: the number of replicas)", where)
        if seeds > MAX_REPLICAS:
            raise ValueError(f"{where} expects seeds (the number of replicas) <= {MAX_REPLICAS}; "
                             f"got {seeds}. Every replica trains in one program: run large "
                             "sweeps in groups, or pass the seeds as a list.")
        seeds = range(int(seeds))
    if isinstance(seeds, (str, bytes, dict, set)) or not hasattr(seeds, "__iter__"):
        raise TypeError(f"{where} expects seeds to be an int (the number of replicas) or a list "
                        f"of distinct int seeds; got {type(seeds).__name__} {seeds!r}.")
    if hasattr(seeds, "__len__") and len(seeds) > MAX_REPLICAS:
        raise ValueError(f"{where} expects at most {MAX_REPLICAS} seeds; got {len(seeds)}.")
    seeds = list(seeds)
    if len(seeds) > MAX_REPLICAS:
        raise ValueError(f"{where} expects at most {MAX_REPLICAS} seeds; got {len(seeds)}.")
    if not seeds:
        raise ValueError(f"{where} expects at least one seed; got an empty seeds.")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"{where} expects integer seeds; got {s!r}.")
        if not np.iinfo(np.int32).min <= s <= np.iinfo(np.int32).max:
            raise ValueError(f"{where} expects seeds that fit in int32; got {s}.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where} expects distinct seeds; got {seeds} (repeated seeds train "
                         "identical replicas and shrink the spread).")
    return [int(s) for s in seeds]


def check_state(state, model, where: str) -> None:
    """`state=` must be a single run's TrainState built for this very model."""
    if not isinstance(state, TrainState) or not isinstance(state.apply_fn, ModelFn):
        raise TypeError(f"{where} expects state= to be a jaxseq TrainState (from fit or "
                        f"js.training.create_train_state); got {type(state).__name__}.")
    if state.apply_fn.model != model:
        raise ValueError(f"{where}: state= was built for another model "
                         f"({type(state.apply_fn.model).__name__} with other settings); pass the "
                         "model it was trained with.")
    if np.ndim(state.step) != 0:
        raise ValueError(f"{where}: state= holds stacked replicas (step {np.shape(state.step)}); "
                         "continue one replica: jax.tree.map(lambda a: a[i], states).")


def split_seed(seed) -> tuple[Array, Array]:
    """seed (int) -> (init key, training key)."""
    init, key = jax.random.split(jax.random.PRNGKey(seed))
    return init, key


def reset_states(variables, rows=None):
    """Zero stateful layers' kept states (Keras' `reset_states()`): a variables dict or a
    `TrainState` in, the same kind out (nothing else changes).

    rows: None (every row, as Keras) or the batch rows that start a new stream: a (batch,) bool
    array (True = reset) or a 1-D integer array of row indices in [-batch, batch). Only those
    rows of every stateful layer's states are zeroed; the others continue exactly. Raises
    ValueError for a bool array of another length or an index out of range, TypeError for
    another dtype (`jaxseq.training.rows`)."""
    model_state = getattr(variables, "model_state", None)
    if model_state is not None:
        return variables.replace(model_state=reset_states(model_state, rows))
    if STATE_COLLECTION not in variables:
        return variables
    if rows is not None:
        return {**variables, STATE_COLLECTION: reset_rows(variables[STATE_COLLECTION], rows,
                                                          "reset_states")}
    zeroed = jax.tree.map(jnp.zeros_like, variables[STATE_COLLECTION])
    return {**variables, STATE_COLLECTION: zeroed}
