"""`js.reset_states(variables, rows=...)`: only the chosen batch rows of every stateful layer's
kept states start again from zeros. Reference: per row, a fresh stateful run (reset rows) or
the uninterrupted run (the other rows)."""

import chex
import jax
import numpy as np
import optax
import pytest

import jaxseq as js

RNG = np.random.default_rng(0)
B = 4
FIRST = RNG.normal(size=(B, 5, 2)).astype(np.float32)
SECOND = RNG.normal(size=(B, 3, 2)).astype(np.float32)


def _model():  # two stateful layers of different kinds: every one's rows are reset
    return js.Sequential((js.LSTM(3, stateful=True, return_sequences=True),
                          js.GRU(2, stateful=True, return_sequences=True)))


def _run(model, variables, x):
    out, upd = model.apply(variables, x, mutable=["rnn_state"])
    return np.asarray(out), {**variables, **upd}


@pytest.mark.parametrize("rows", [np.array([False, True, False, True]), [1, 3], np.array([-3, 3]),
                                  jax.numpy.array([1, 3, 3])])
def test_reset_rows_start_fresh_and_the_others_continue(rows):
    model = _model()
    variables = model.init(jax.random.key(0), FIRST)
    _, after = _run(model, variables, FIRST)
    got, _ = _run(model, js.reset_states(after, rows=rows), SECOND)
    go_on, _ = _run(model, after, SECOND)  # no reset: every row continues
    fresh, _ = _run(model, variables, SECOND)  # all rows from zeros
    reset = np.array([False, True, False, True])
    np.testing.assert_array_equal(got[~reset], go_on[~reset])
    np.testing.assert_array_equal(got[reset], fresh[reset])
    assert not np.allclose(go_on[reset], fresh[reset])  # the reset mattered
    # the kept states themselves: reset rows zero, others untouched, params the same
    zeroed = js.reset_states(after, rows=rows)
    for a, b in zip(jax.tree.leaves(zeroed["rnn_state"]), jax.tree.leaves(after["rnn_state"]),
                    strict=True):
        assert a.shape[0] == B
        np.testing.assert_array_equal(a[reset], 0)
        np.testing.assert_array_equal(a[~reset], b[~reset])
    chex.assert_trees_all_equal(zeroed["params"], after["params"])


def test_on_a_train_state_and_under_jit():
    model = _model()
    state = js.training.create_train_state(model, optax.sgd(0.1), FIRST, jax.random.key(1),
                                           batch_size=B)
    _, after = _run(model, state.variables, FIRST)
    state = state.replace(model_state={"rnn_state": after["rnn_state"]})
    flags = np.array([True, False, False, False])
    out = js.reset_states(state, rows=flags)
    assert isinstance(out, js.training.TrainState) and out.step == state.step
    h = jax.tree.leaves(out.model_state["rnn_state"])[0]
    np.testing.assert_array_equal(h[0], 0)
    assert np.any(h[1:])
    jitted = jax.jit(lambda s, r: js.reset_states(s, rows=r))(state, flags)
    chex.assert_trees_all_equal(jitted.model_state, out.model_state)
    idx = jax.jit(lambda s, r: js.reset_states(s, rows=r))(state, np.array([0]))
    chex.assert_trees_all_equal(idx.model_state, out.model_state)
    # all rows = the plain reset; no rows = unchanged
    chex.assert_trees_all_equal(js.reset_states(state, rows=np.ones(B, bool)).model_state,
                                js.reset_states(state).model_state)
    chex.assert_trees_all_equal(js.reset_states(state, rows=[]).model_state, state.model_state)


@pytest.mark.parametrize("rows, error, words", [
    (np.ones(3, bool), ValueError, r"bool rows array of shape \(batch,\) = \(4,\).*got \(3,\)"),
    ([4], ValueError, r"row indices in \[-4, 4\).*got \[4\]"),
    ([0, -5], ValueError, r"got \[-5\]"),
    (np.ones((4, 1), bool), ValueError, r"rows of shape \(batch,\)"),
    ([0.0, 1.0], TypeError, "got dtype float64"),
    (1, TypeError, r"scalar 1 \(use \[1\] for one row\)"),
])
def test_bad_rows_are_named(rows, error, words):
    model = _model()
    variables = model.init(jax.random.key(0), FIRST)
    with pytest.raises(error, match=words):
        js.reset_states(variables, rows=rows)
