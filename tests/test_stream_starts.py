"""`fit(..., stream_starts=...)`: a stateful model trained on windows of several streams side
by side zeroes a batch row's kept state where a new stream starts in that row.

Layout (batch_size 2, shuffle=False): row 0 holds stream P (2 windows) then stream R (1 window),
row 1 holds stream Q (3 windows); samples in batch order: (p1, q1), (p2, q2), (r1, q3).
Reference: every stream run on its own from zero state (batch 1) in plain `model.apply`
calls, with the parameters frozen (sgd with a zero rate) so the loss and the
kept states depend on the resets only; and, for training, a hand-written loop of the public
`train_step` with `js.reset_states(state, rows=...)` before each step."""

import jax
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import training

RNG = np.random.default_rng(0)
T, BS = 3, 2
WINDOWS = {s: RNG.normal(size=(k, T, 1)).astype(np.float32) for s, k in
           (("p", 2), ("q", 3), ("r", 1))}
TARGETS = {s: RNG.normal(size=(len(w), 1)).astype(np.float32) for s, w in WINDOWS.items()}
ORDER = [("p", 0), ("q", 0), ("p", 1), ("q", 1), ("r", 0), ("q", 2)]  # (stream, window)
X = np.stack([WINDOWS[s][i] for s, i in ORDER])
Y = np.stack([TARGETS[s][i] for s, i in ORDER])
STARTS = np.array([i == 0 for _, i in ORDER])  # [T, T, F, F, T, F]
MODEL = js.Sequential((js.SimpleRNN(2, stateful=True), js.Dense(1)))
KW = dict(batch_size=BS, shuffle=False, verbose=0)


def _alone(params, stream, after=None):
    """One stream from zero state (batch 1), window by window -> (squared errors, kept state);
    `after`: the kept state to start from instead (the run without a reset)."""
    variables = MODEL.init(jax.random.key(0), X[:1])
    variables = {**variables, "params": params}
    if after is not None:
        variables["rnn_state"] = after
    errors = []
    for window, target in zip(WINDOWS[stream], TARGETS[stream], strict=True):
        out, kept = MODEL.apply(variables, window[None], mutable=["rnn_state"])
        variables = {**variables, **kept}
        errors.append(float(np.mean((np.asarray(out[0], np.float64) - target) ** 2)))
    return errors, variables["rnn_state"]


@pytest.fixture(scope="module")
def frozen():
    return js.fit(MODEL, X, Y, epochs=1, optimizer=optax.sgd(0.0), stream_starts=STARTS, **KW)


def test_each_stream_runs_as_if_alone(frozen):
    state, history = frozen
    errors, kept = {}, {}
    for s in WINDOWS:
        errors[s], kept[s] = _alone(state.params, s)
    want = np.mean([e for s in WINDOWS for e in errors[s]])  # equal batches: the mean of all
    np.testing.assert_allclose(history.loss[0], want, rtol=1e-6)
    rows = state.model_state["rnn_state"]  # row 0 ends with stream r, row 1 with stream q
    jax.tree.map(lambda got, r, q: (np.testing.assert_allclose(got[0], r[0], rtol=1e-6),
                                    np.testing.assert_allclose(got[1], q[0], rtol=1e-6)),
                 rows, kept["r"], kept["q"])
    # the data can tell: r continuing p's state (no reset) gives another loss
    carried, _ = _alone(state.params, "r", after=kept["p"])
    assert abs(carried[0] - errors["r"][0]) > 1e-4


def test_training_equals_train_step_after_reset_states():
    tx = optax.adam(0.05)
    state, _ = js.fit(MODEL, X, Y, epochs=2, optimizer=tx, stream_starts=STARTS, **KW)
    init_key, key = training.split_seed(0)
    ref = training.create_train_state(MODEL, tx, X, init_key, batch_size=BS)
    _, dropout_key = jax.random.split(key)
    step = jax.jit(lambda s, b: training.train_step(s, b, dropout_key)[0])
    for _ in range(2):
        for k in range(0, len(X), BS):
            ref = js.reset_states(ref, rows=STARTS[k:k + BS])
            ref = step(ref, training.Batch(X[k:k + BS], Y[k:k + BS], None))
    # one compiled epoch (a scan) against separate jitted steps: float32 rounding
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state.params, ref.params)


@pytest.mark.parametrize(("model", "starts", "kw", "error", "match"), [
    (js.Sequential((js.SimpleRNN(2), js.Dense(1))), STARTS, {}, ValueError, "keeps none"),
    (MODEL, STARTS, {"shuffle": True}, ValueError, "pass shuffle=False"),
    (MODEL, STARTS[:4], {}, ValueError, r"shape \(samples,\) = \(6,\)"),
    (MODEL, STARTS.astype(int), {}, TypeError, "bool array"),
])
def test_stream_starts_is_refused_where_it_cannot_apply(model, starts, kw, error, match):
    with pytest.raises(error, match=match):
        js.fit(model, X, Y, epochs=1, stream_starts=starts, **{**KW, **kw})
