"""Loss and metric reduction against the real Keras 3 (JAX backend), end to end.

jaxseq claims Keras' reduction (see `jaxseq.training.losses`): a batch loss is
sum(w * m * entries) / count(m) ("sum_over_batch_size": divided by the entries, not by sum(w));
the epoch loss is the batch-size-weighted mean of the batch losses (Keras' loss tracker), a
padded last batch counting only its real samples; metrics are masked but not weighted.

Every check here runs real Keras on the same weights and the same predictions:
- the batch loss against `keras.losses.*` (per-sample and per-step weights),
- masked losses against Keras' own `reduce_weighted_values` (batch by batch, on jaxseq's
  predictions) and masked metrics against `keras.metrics.*` with the mask as weight (what Keras'
  `MeanMetricWrapper.apply_mask(reduction="sum")` does), and end to end against a Keras model
  whose `Masking` layer carries the mask to its loss,
- `js.evaluate` against `model.evaluate` for several batch sizes,
- `js.fit` against `model.fit` (plain SGD, shuffle=False, a partial last batch, sample
  weights, metrics, validation_data / validation_split): history and final weights.

Initial weights are jaxseq's (`create_train_state` with `split_seed(0)[0]`, what `fit` starts
from), written into Keras with `jaxseq.interop.to_keras` before every Keras call that uses
them, so tests do not depend on their order. Keras models are built and compiled once.

Keras broadcasts by rank promotion, so every Keras call runs under
`jax.numpy_rank_promotion("allow")`; jaxseq runs under the suite's strict "raise" setting.

Keras multiplies (batch, time) loss entries by sample weights as given: per-sample weights
(batch,) on a (batch, time, features) target must be given to Keras as w[:, None] (jaxseq
broadcasts them over time itself).
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from keras.src.losses.loss import reduce_weighted_values  # noqa: E402

import jaxseq as js  # noqa: E402
from jaxseq.interop import from_keras, to_keras  # noqa: E402

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "jax", reason="Keras reduction tests need KERAS_BACKEND=jax"
    ),
    # Keras' own Variable.__array__ under NumPy 2; not ours.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
]

# Same computation, float32 on both sides: only summation order differs.
RTOL = 1e-6
# Training: 9 SGD steps of float32 rounding differences (different kernels, same math).
FIT_RTOL, FIT_ATOL = 1e-5, 1e-6

N, T, F = 10, 5, 2
_RNG = np.random.default_rng(20240607)
X = _RNG.normal(size=(N, T, F)).astype(np.float32)
Y_SEQ = _RNG.normal(size=(N, T, 1)).astype(np.float32)  # many-to-many target: (N, T) entries
Y_VEC = _RNG.normal(size=(N, 2)).astype(np.float32)  # many-to-one target: (N,) entries
W_SAMPLE = _RNG.uniform(0.1, 3.0, size=(N,)).astype(np.float32)
W_STEP = _RNG.uniform(0.1, 3.0, size=(N, T)).astype(np.float32)
W_STEP[0, :2] = 0.0  # zero weights count as entries (divided by the entries, not by sum(w))
# Validation set for fit (independent of the training data).
XV = _RNG.normal(size=(7, T, F)).astype(np.float32)
YV = _RNG.normal(size=(7, T, 1)).astype(np.float32)
WV = _RNG.uniform(0.1, 3.0, size=(7, T)).astype(np.float32)

# True = real step. Rows: full, right padding, left padding, holes, one real step, full,
# fully masked, right padding, full, left padding. Every batch of 3, 4 or 10 rows holds a real
# entry; batches of 1 give row 6 a batch with none (see the masked reduction test).
MASK = np.array(
    [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1],
        [1, 0, 1, 0, 1],
        [0, 0, 0, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1],
    ],
    dtype=bool,
)
X_MASKED = np.where(MASK[..., None], X, 0.0).astype(np.float32)  # Keras' Masking(0.0) input

TX = optax.sgd(0.1)  # one object: jaxseq compiles once per (model, optimizer)
METRICS = ["mae", "mse", "rmse", "mape"]
# jaxseq metric name -> Keras' metric (compile argument) and its history / logs key.
KERAS_METRICS = {
    "mae": ("mae", "mae"),
    "mse": ("mse", "mse"),
    "rmse": (keras.metrics.RootMeanSquaredError, "root_mean_squared_error"),
    "mape": ("mape", "mape"),
}

# kind -> (jaxseq model, target); the Keras twin is built in `_keras_model`.
MODELS = {
    "seq": (js.Sequential((js.LSTM(4, return_sequences=True), js.TimeDistributed(nn.Dense(1)))),
            Y_SEQ),
    "vec": (js.Sequential((js.GRU(3), nn.Dense(2))), Y_VEC),
}


def _keras_ctx():
    return jax.numpy_rank_promotion("allow")


@functools.cache
def initial_params(kind: str):
    model, _ = MODELS[kind]
    return js.training.create_train_state(model, TX, X, js.training.split_seed(0)[0]).params


@functools.cache
def _keras_model(kind: str):
    """The Keras twin of MODELS[kind] ("masked": the seq model behind Masking(0.0)), compiled
    with plain SGD(0.1), mse and the four metrics."""
    with _keras_ctx():
        if kind == "vec":
            layers = [keras.layers.GRU(3), keras.layers.Dense(2)]
        else:
            layers = [keras.layers.LSTM(4, return_sequences=True),
                      keras.layers.TimeDistributed(keras.layers.Dense(1))]
            if kind == "masked":
                layers = [keras.layers.Masking(0.0), *layers]
        km = keras.Sequential([keras.Input((T, F)), *layers])
        metrics = [m() if isinstance(m, type) else m for m, _ in KERAS_METRICS.values()]
        km.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=metrics)
    return km


def keras_model(kind: str):
    """`_keras_model(kind)` holding jaxseq's initial params for `kind` (rewritten every call)."""
    km = _keras_model(kind)
    if kind == "masked":  # Masking has no weights and no jaxseq counterpart: layer by layer
        params = initial_params("seq")
        to_keras(params["lstm"], km.layers[1])
        to_keras(params["time_distributed"], km.layers[2])
    else:
        to_keras(initial_params(kind), km)
    return km


def keras_evaluate(km, x, y, **kw) -> dict:
    with _keras_ctx():
        return km.evaluate(x, y, verbose=0, return_dict=True, **kw)


def keras_logs(logs: dict) -> dict:
    """Keras' logs / history keyed by jaxseq's names."""
    rename = {k: name for name, (_, k) in KERAS_METRICS.items()}
    out = {}
    for key, value in logs.items():
        prefix = "val_" if key.startswith("val_") else ""
        base = key[len(prefix):]
        out[prefix + rename.get(base, base)] = value
    return out


def predictions(kind: str, mask=None) -> np.ndarray:
    model, _ = MODELS[kind]
    return np.asarray(js.predict(model, initial_params(kind), X, mask=mask))


def assert_tree_close(got, want, **tol):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), err_msg=f"leaf {i}", **tol)


# --------------------------------------------------------------------------------------------
# One batch: the loss of keras.losses, with sample weights
# --------------------------------------------------------------------------------------------

KERAS_LOSSES = {"mse": keras.losses.MeanSquaredError, "mae": keras.losses.MeanAbsoluteError}


@pytest.mark.parametrize(
    "loss, kind, weights",
    [("mse", "seq", None), ("mse", "seq", "sample"), ("mse", "seq", "step"),
     ("mse", "vec", "sample"), ("mae", "seq", "step"), ("mae", "vec", "sample")],
)
def test_weighted_batch_loss_matches_keras_loss(loss, kind, weights):
    model, y = MODELS[kind]
    pred = predictions(kind)
    w = {None: None, "sample": W_SAMPLE, "step": W_STEP}[weights]
    # Keras multiplies (N, T) entries by the weights as given: per-sample ones need w[:, None].
    w_keras = w[:, None] if weights == "sample" and kind == "seq" else w
    with _keras_ctx():
        want = float(KERAS_LOSSES[loss]()(y, pred, sample_weight=w_keras))
    got = js.evaluate(model, initial_params(kind), X, y, batch_size=N, loss=loss,
                      sample_weight=w)
    np.testing.assert_allclose(got, want, rtol=RTOL)
    if w is not None:
        # The weights matter, and the reduction divides by the entries, not by sum(w): the
        # other candidate reductions are far from Keras' value.
        with _keras_ctx():
            entries = np.asarray(keras.losses.get(loss)(y, pred))  # (N, T) or (N,)
        w_full = np.broadcast_to(w_keras, entries.shape)
        assert abs(want - entries.mean()) > 1e-3 * want
        assert abs(want - (w_full * entries).sum() / w_full.sum()) > 1e-3 * want


# --------------------------------------------------------------------------------------------
# Masks: Keras' reduce_weighted_values and keras.metrics, batch by batch
# --------------------------------------------------------------------------------------------


def _keras_masked_epoch(y, pred, w_keras, batch_size: int) -> dict:
    """Keras' evaluate reduction of masked (N, T) entries in in-order batches: each batch's loss
    by `reduce_weighted_values` (sum_over_batch_size), averaged with the batch size as weight
    (the loss tracker); each metric a keras.metrics object fed every batch with the mask as its
    weight (what MeanMetricWrapper does with a Keras mask; Keras' own RootMeanSquaredError
    ignores a Keras mask, see MASKED_METRICS, so here it gets the mask as weight too: the
    square root of the masked mse, which is what jaxseq claims)."""
    metrics = {"mae": keras.metrics.MeanAbsoluteError(), "mse": keras.metrics.MeanSquaredError(),
               "rmse": keras.metrics.RootMeanSquaredError(),
               "mape": keras.metrics.MeanAbsolutePercentageError()}
    tracker = keras.metrics.Mean()
    with _keras_ctx():
        for i in range(0, N, batch_size):
            b = slice(i, i + batch_size)
            values = keras.losses.mean_squared_error(y[b], pred[b])
            sw = None if w_keras is None else w_keras[b]
            loss = reduce_weighted_values(values, sample_weight=sw, mask=MASK[b])
            tracker.update_state(loss, sample_weight=values.shape[0])
            m = MASK[b].astype(np.float32)
            for metric in metrics.values():
                metric.update_state(y[b], pred[b], sample_weight=m)
        out = {"loss": float(tracker.result())}
        out.update({k: float(v.result()) for k, v in metrics.items()})
    return out


@pytest.mark.parametrize("weights", [None, "sample", "step"])
@pytest.mark.parametrize("batch_size", [N, 4, 1])  # 1: row 6 alone, a batch with no real entry
def test_masked_loss_and_metrics_match_keras_reduction(weights, batch_size):
    model, y = MODELS["seq"]
    pred = predictions("seq", MASK)
    w = {None: None, "sample": W_SAMPLE, "step": W_STEP}[weights]
    w_keras = w[:, None] if weights == "sample" else w
    want = _keras_masked_epoch(y, pred, w_keras, batch_size)
    got = js.evaluate(model, initial_params("seq"), X, y, batch_size=batch_size,
                      sample_weight=w, mask=MASK, metrics=METRICS, return_dict=True)
    # Keras divides by the unmasked count (this release through divide_no_nan, total / count
    # as a weight; older releases by count + epsilon 1e-7); jaxseq by the count itself: equal
    # to float32 rounding for counts >= 1 (rtol 1e-6). A batch with no real entry has loss 0
    # in both (divide_no_nan; jaxseq's count > 0 guard) and still counts in the loss tracker
    # with its batch size.
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, err_msg=k)
    # Non-vacuous: the mask changes the loss (masked entries are real numbers here).
    with _keras_ctx():
        plain = float(keras.losses.MeanSquaredError()(y, pred, sample_weight=w_keras))
    if batch_size == N:
        assert abs(plain - want["loss"]) > 1e-3 * want["loss"]
    # NaN targets at masked steps never reach the loss or the metrics.
    y_nan = np.where(MASK[..., None], y, np.nan).astype(np.float32)
    got_nan = js.evaluate(model, initial_params("seq"), X, y_nan, batch_size=batch_size,
                          sample_weight=w, mask=MASK, metrics=METRICS, return_dict=True)
    assert got_nan == got


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_evaluate_per_step_weights_must_hold():
    """The issue's example: x (4, 5, 2), y (4, 5, 1), per-step weights with w[0, :2] = 0."""
    model, y = MODELS["seq"]
    x4, y4, w4 = X[:4], y[:4], W_STEP[:4]
    assert (w4[0, :2] == 0).all()
    want = keras_evaluate(keras_model("seq"), x4, y4, sample_weight=w4)["loss"]
    got = js.evaluate(model, initial_params("seq"), x4, y4, sample_weight=w4)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    unweighted = js.evaluate(model, initial_params("seq"), x4, y4)
    assert abs(unweighted - want) > 1e-3 * want


@pytest.mark.parametrize(
    "kind, batch_size, weights",
    [("seq", None, "step"), ("seq", 3, "step"), ("seq", 4, "sample"), ("vec", 3, "sample"),
     ("vec", None, None)],
)
def test_evaluate_matches_keras(kind, batch_size, weights):
    model, y = MODELS[kind]
    w = {None: None, "sample": W_SAMPLE, "step": W_STEP}[weights]
    w_keras = w[:, None] if weights == "sample" and kind == "seq" else w
    kw = {} if batch_size is None else {"batch_size": batch_size}  # both default to 32
    want = keras_logs(keras_evaluate(keras_model(kind), X, y, sample_weight=w_keras, **kw))
    got = js.evaluate(model, initial_params(kind), X, y, sample_weight=w, metrics=METRICS,
                      return_dict=True, **kw)
    assert got.keys() == want.keys() == {"loss", *METRICS}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, err_msg=k)
    # The list form: [loss, *metrics] in the order asked for.
    as_list = js.evaluate(model, initial_params(kind), X, y, sample_weight=w, metrics=METRICS,
                          **kw)
    np.testing.assert_allclose(as_list, [want["loss"], *(want[m] for m in METRICS)],
                               rtol=RTOL)
    if w is not None:  # metrics are not weighted: the weighted loss differs from the mse metric
        assert abs(want["loss"] - want["mse"]) > 1e-3 * want["mse"]


# --------------------------------------------------------------------------------------------
# fit: epoch losses (loss tracker), metrics, validation, final weights
# --------------------------------------------------------------------------------------------


def _compare_fit(history, state, keras_history, km, want_keys):
    want = keras_logs(keras_history.history)
    got = history.history
    assert set(got) == set(want) == set(want_keys)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=FIT_RTOL,
                                   err_msg=k)
    assert_tree_close(state.params, from_keras(km), rtol=FIT_RTOL, atol=FIT_ATOL)


def test_fit_matches_keras_with_validation_data():
    """10 samples in batches of 4 (the last one 2 real of 4), per-sample weights (broadcast over
    time), 4 metrics, weighted validation data in batches of 3, 3 epochs of plain SGD."""
    model, y = MODELS["seq"]
    km = keras_model("seq")
    with _keras_ctx():
        kh = km.fit(X, y, sample_weight=W_SAMPLE[:, None], batch_size=4, epochs=3,
                    shuffle=False, verbose=0, validation_data=(XV, YV, WV),
                    validation_batch_size=3)
    state, history = js.fit(model, X, y, epochs=3, batch_size=4, optimizer=TX, shuffle=False,
                            verbose=0, seed=0, sample_weight=W_SAMPLE, metrics=METRICS,
                            validation_data=(XV, YV, WV), validation_batch_size=3)
    names = ["loss", *METRICS]
    _compare_fit(history, state, kh, km, names + [f"val_{k}" for k in names])
    # Training moved the weights well beyond the tolerance (the final check can fail).
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         state.params, initial_params("seq"))
    assert max(jax.tree.leaves(moved)) > 1e-2


def test_fit_matches_keras_with_validation_split():
    """validation_split=0.25: the last 3 of 10 samples validate (before shuffling); 7 train in
    batches of 3 (the last one 1 real of 3); per-sample weights on a (batch, features) target."""
    model, y = MODELS["vec"]
    km = keras_model("vec")
    with _keras_ctx():
        kh = km.fit(X, y, sample_weight=W_SAMPLE, batch_size=3, epochs=2, shuffle=False,
                    verbose=0, validation_split=0.25)
    state, history = js.fit(model, X, y, epochs=2, batch_size=3, optimizer=TX, shuffle=False,
                            verbose=0, seed=0, sample_weight=W_SAMPLE, metrics=METRICS,
                            validation_split=0.25)
    names = ["loss", *METRICS]
    _compare_fit(history, state, kh, km, names + [f"val_{k}" for k in names])


# Keras behind Masking(0.0) against jaxseq with `mask=`. Two Keras metrics do not see the mask:
# - RootMeanSquaredError is a plain `Mean` of squared errors: unlike the MeanMetricWrapper
#   metrics ("mae", "mse", "mape") it never reads the Keras mask, so it averages over every
#   step, masked ones included (at whatever the model outputs there);
# - Keras' JAX trainer computes its *training* metrics on predictions returned through
#   `jax.value_and_grad`'s aux output, which drops the Keras mask, so training "mae", "mse",
#   "mape" average over masked steps too (its loss and its evaluate / validation are masked).
# jaxseq masks every metric, in training and evaluation alike, so these comparisons take the
# loss, the validation loss and the masked validation metrics, never rmse or training metrics.
MASKED_METRICS = ["mae", "mse", "mape"]


def test_masked_fit_and_validation_match_keras_masking_layer():
    """Training with a mask and per-step weights (batches of 4: 4, 4, 2 real) and validating on
    the same masked data with per-step weights in batches of 3 (3, 3, 3, 1 real): Keras'
    Masking(0.0) carries the mask to its loss and its validation metrics; jaxseq gets it as
    `mask=` (the masked steps of X_MASKED are all zero, no real step is)."""
    model, y = MODELS["seq"]
    km = keras_model("masked")
    with _keras_ctx():
        kh = km.fit(X_MASKED, y, sample_weight=W_STEP, batch_size=4, epochs=2, shuffle=False,
                    verbose=0, validation_data=(X_MASKED, y, W_STEP), validation_batch_size=3)
    state, history = js.fit(model, X_MASKED, y, epochs=2, batch_size=4, optimizer=TX,
                            shuffle=False, verbose=0, seed=0, sample_weight=W_STEP, mask=MASK,
                            metrics=MASKED_METRICS,
                            validation_data=(X_MASKED, y, W_STEP, MASK), validation_batch_size=3)
    want = keras_logs(kh.history)
    compared = ["loss", "val_loss", *(f"val_{k}" for k in MASKED_METRICS)]
    assert set(history.history) == set(want) - {"rmse", "val_rmse"}
    for k in compared:
        np.testing.assert_allclose(history.history[k], want[k], rtol=FIT_RTOL, err_msg=k)
    params = from_keras(km.layers[1]), from_keras(km.layers[2])
    assert_tree_close((state.params["lstm"], state.params["time_distributed"]), params,
                      rtol=FIT_RTOL, atol=FIT_ATOL)
    # Non-vacuous: the validation metrics are over the real steps only, and those differ
    # from all steps.
    pred = np.asarray(js.predict(model, state.params, X_MASKED, mask=MASK))
    err = np.square(pred - y)[..., 0]
    np.testing.assert_allclose(history.history["val_mse"][-1], err[MASK].mean(), rtol=1e-5)
    assert abs(err.mean() - err[MASK].mean()) > 1e-3 * err[MASK].mean()
