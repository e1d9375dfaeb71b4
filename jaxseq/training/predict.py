"""`predict` and `evaluate`: compiled inference over a trained state, params or variables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import numpy as np

from jaxseq import contracts
from jaxseq.training import data as data_mod
from jaxseq.training import loop, losses
from jaxseq.training.compile import cached, jit
from jaxseq.training.state import ModelFn, TrainState, as_variables
from jaxseq.typing import Inputs, Mask, Outputs, SampleWeight, Targets


def _forward(model, carry_state: bool = False):
    def build():
        fn = ModelFn(model)
        if carry_state:
            return jit(lambda variables, x, m: fn.forward(variables, x, mask=m,
                                                          carry_state=True))
        return jit(lambda variables, x, m: fn.forward(variables, x, mask=m, train=False)[0])

    return cached("predict", model, carry_state, build=build)


def predict(model: nn.Module, params, x: Inputs, *, batch_size: int | None = None,
            mask: Mask | None = None, return_variables: bool = False
            ) -> Outputs | tuple[Outputs, dict]:
    """Model outputs for x in inference mode (no dropout), compiled.

    Args:
      model: the linen Module.
      params: its params dict, a variables dict ({"params": ..., "batch_stats": ...}) or a
        `TrainState` (from `fit`).
      x: (batch, ...) inputs; several inputs as a tuple or list (passed to the model
        positionally) or a dict (passed as keyword arguments), every one with the same batch.
      batch_size: run x in batches of this size (the last one padded on the host, the outputs
        trimmed): one compiled program per (model, batch shape) serves any number of samples.
      mask: (batch, time) bool, passed to the model.
      return_variables: also return the variables with the states that stateful layers keep
        advanced past x (Keras' stateful `predict`): `(outputs, variables)`, to pass to the next
        call (continuing each row); `jaxseq.reset_states(variables)` zeroes them.

    Returns: (batch, ...) the model's outputs (a jax Array), or `(outputs, variables)`.
    Raises: ValueError / TypeError naming the argument.
    """
    x = contracts.as_inputs(x, "x", "predict")
    n = contracts.input_samples(x, "predict")
    if n < 1:
        raise ValueError(f"predict expects x with a non-empty batch axis; got "
                         f"{[contracts.shape_of(a) for _, a in contracts.input_items(x)]}.")
    contracts.check_input_count(model, x, "predict")
    variables = as_variables(params, "predict")
    m = data_mod.check_mask(model, x, mask, "predict")
    data_mod.check_params(model, variables["params"], x, "predict")
    data_mod.warn_non_finite(x, data_mod.real_steps(model, x, m), "predict")
    if return_variables:
        if batch_size is not None:
            raise ValueError("predict(return_variables=True) runs x as one batch (stateful "
                             "layers keep one state per row); drop batch_size.")
        y, model_state = _forward(model, True)(variables, jax.device_put(x), m)
        return y, {"params": variables["params"], **model_state}
    fn = _forward(model)
    if batch_size is None:
        return fn(variables, jax.device_put(x), m)
    contracts.check_positive_int(batch_size, "batch_size", "predict")
    x = jax.tree.map(np.asarray, x)
    pad = (-n) % batch_size

    def padded(a):
        return np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a

    xp, mp = jax.tree.map(padded, x), None if m is None else padded(m)
    outs = [fn(variables, jax.tree.map(lambda a, i=i: a[i: i + batch_size], xp),
               None if mp is None else mp[i: i + batch_size])
            for i in range(0, n + pad, batch_size)]  # dispatched back to back, fetched once
    return jax.device_put(np.concatenate([np.asarray(o) for o in outs])[:n])  # nothing compiles


def evaluate(model: nn.Module, params, x: Inputs, y: Targets, *, batch_size: int = 32,
             loss: str | Callable = "mse", metrics: Sequence = (),
             sample_weight: SampleWeight | None = None, mask: Mask | None = None,
             return_dict: bool = False) -> float | list[float] | dict[str, float]:
    """The loss (and metrics) of the model on (x, y) in inference mode, as Keras' `evaluate`.

    Args:
      model, params: as in `predict`.
      x: (batch, ...), or several inputs as in `predict`; y: (batch, ...) shaped like the
        model's output.
      batch_size: evaluated in mini-batches of this size, in order (Keras' default 32); the
        loss is the batch-size-weighted mean of the batch losses, so with masks or weights the
        value depends on the batching exactly as in Keras.
      loss, metrics, sample_weight, mask: as in `fit` (Keras reduction, see
        `jaxseq.training.losses`).
      return_dict: return {"loss": ..., metric: ...}.

    Returns: the loss (float) without metrics; with metrics `[loss, *metric values]`, as
      Keras; a dict with `return_dict=True`.
    Raises: ValueError / TypeError naming the argument.
    """
    contracts.check_positive_int(batch_size, "batch_size", "evaluate")
    data = data_mod.check_batch(model, x, y, sample_weight, mask, where="evaluate")
    loss_fn = losses.get_loss(loss, "evaluate")
    metric_list = losses.get_metrics(metrics, "evaluate")
    variables = as_variables(params, "evaluate")
    data_mod.check_params(model, variables["params"], data.x, "evaluate")
    state = TrainState(step=0, apply_fn=ModelFn(model), params=variables["params"], tx=None,
                       opt_state=None,
                       model_state={k: v for k, v in variables.items() if k != "params"})
    bs = min(batch_size, data_mod.num_samples(data.x))
    fn = cached("evaluate", model, loss_fn, metric_list, bs, build=lambda: jit(partial(
        loop.evaluate_batches, batch_size=bs, loss=loss_fn, metrics=metric_list)))
    values = {k: float(v) for k, v in fn(state, data_mod.as_device(data)).items()}
    if return_dict:
        return values
    return values["loss"] if not metric_list else [values["loss"],
                                                   *(values[m.name] for m in metric_list)]
