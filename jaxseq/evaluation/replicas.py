"""Skill over replicas: the replicas of `jaxseq.fit_replicas` scored and summarized.

`fit_replicas(model, x, y, seeds=30, epochs=..., batch_size=...)` trains one replica per seed in
ONE compiled program: the `fit` loop vmapped over the replicas' states and keys. Then
`skill(model, states, x, y, history=history)` scores every replica (MSE, RMSE, MAE) and
summarizes each score over replicas: mean, std (ddof=1, the sample standard deviation), min,
median, max and a 95% bootstrap interval of the mean. Replicas whose training went non-finite
(`history.nonfinite`, set by `fit_replicas`), or whose scores are not finite, are counted in
`n_nonfinite` and left out of the statistics, never silently.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import numpy as np

from jaxseq import contracts
from jaxseq.history import History
from jaxseq.training import data as data_mod
from jaxseq.training.compile import cached, jit
from jaxseq.training.state import ModelFn, as_variables
from jaxseq.typing import Inputs, Targets

__all__ = ["Summary", "bootstrap_means", "scores", "skill", "summarize"]


# ---------------------------------------------------------------------------------------------
# Skill


@dataclasses.dataclass(frozen=True)
class Summary:
    """One score summarized over replicas (finite replicas only; see n_nonfinite)."""

    mean: float
    std: float
    min: float
    median: float
    max: float
    ci95: tuple[float, float]
    n: int
    n_nonfinite: int


def as_scores(values, name: str, where: str) -> np.ndarray:
    """Scores (any shape of real numbers) -> a float64 1-D array; anything else (strings,
    objects, complex numbers, None) is a TypeError naming the argument."""
    if values is None or isinstance(values, (str, bytes)):
        raise TypeError(f"{where} expects {name} to be an array of numbers; got "
                        f"{type(values).__name__}.")
    try:
        a = np.asarray(values)
        if a.dtype.kind not in "biuf":
            raise TypeError(a.dtype)
        return a.astype(np.float64).ravel()
    except (TypeError, ValueError):
        raise TypeError(f"{where} expects {name} to be an array of real numbers; got "
                        f"{str(values)[:60]!r}.") from None


def check_bootstrap(n_boot, seed, where: str) -> None:
    """`n_boot` a positive int; `seed` an int (NumPy's generator seed)."""
    contracts.check_positive_int(n_boot, "n_boot", where)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"{where} expects seed to be an int >= 0; got {seed!r}.")


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) means of resamples with replacement of `values` (1-D), from
    `np.random.default_rng(seed)`."""
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)


def summarize(values, *, n_boot: int = 10_000, seed: int = 0, failed=None) -> Summary:
    """Summary statistics of per-replica scores (replicas,); a 95% percentile-bootstrap interval
    of the mean from `n_boot` resamples (seeded). Replicas flagged in `failed` (bool
    (replicas,)) and non-finite values are counted in `n_nonfinite`, then left out."""
    v = as_scores(values, "values", "summarize")
    check_bootstrap(n_boot, seed, "summarize")
    keep = np.isfinite(v)
    if failed is not None:
        keep &= ~np.asarray(failed, bool).ravel()
    finite = v[keep]
    bad = int(v.size - finite.size)
    if finite.size == 0:
        nan = float("nan")
        return Summary(nan, nan, nan, nan, nan, (nan, nan), 0, bad)
    means = bootstrap_means(finite, n_boot, seed)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return Summary(
        mean=float(finite.mean()),
        std=float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        min=float(finite.min()),
        median=float(np.median(finite)),
        max=float(finite.max()),
        ci95=(float(lo), float(hi)),
        n=int(finite.size),
        n_nonfinite=bad,
    )


def scores(model: nn.Module, params, x, y) -> dict[str, np.ndarray]:
    """Per-replica MSE, RMSE and MAE (each (replicas,), float64) of stacked `params` (or the
    states of `fit_replicas`; leading replica axis) on (x, y)."""
    data_mod.check_xy(model, x, y, where="skill")
    variables = as_variables(params, "skill")
    data_mod.check_params(model, variables["params"], x, "skill", replicas=True)
    predict = cached("predict_replicas", model, build=lambda: jit(jax.vmap(
        lambda v, x: ModelFn(model).forward(v, x)[0], in_axes=(0, None))))
    pred = np.asarray(predict(variables, jax.device_put(np.asarray(x))), np.float64)
    err = pred - np.asarray(y, np.float64)[None]
    axes = tuple(range(1, err.ndim))
    mse = np.mean(err**2, axis=axes)
    return {"mse": mse, "rmse": np.sqrt(mse), "mae": np.mean(np.abs(err), axis=axes)}


def skill(model: nn.Module, params, x: Inputs, y: Targets, *, history: History | None = None,
          n_boot: int = 10_000, seed: int = 0) -> dict:
    """Score every replica of `fit_replicas` on (x, y) and summarize each score over replicas.

    Args:
      model: the trained model.
      params: the stacked params or states of `fit_replicas` (leading replica axis R).
      x: (batch, ...) inputs; y: (batch, ...) targets shaped like the model's output.
      history: that run's History; its `nonfinite` flags (R,) name the replicas whose training
        failed: they are counted in `n_nonfinite` and left out of the statistics.
      n_boot, seed: bootstrap resamples (and their seed) for the 95% interval of the mean.

    Returns:
      {"mse" | "rmse" | "mae": (per-replica scores (R,) float64, Summary)}.

    Raises:
      ValueError: params of a single model (no replica axis), params of another model, or x / y
        that do not fit the model (named, with shapes).
    """
    failed = None if history is None else getattr(history, "nonfinite", None)
    return {k: (v, summarize(v, n_boot=n_boot, seed=seed, failed=failed))
            for k, v in scores(model, params, x, y).items()}
