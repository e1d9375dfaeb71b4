"""Several inputs in `fit`, `predict`, `evaluate`, `fit_replicas`, `cross_validate`, validation,
masks and checkpoints. Reference: the same model written for one input that concatenates the
two inside (same parameter names, so the same seed draws the same weights): every result must
be equal bitwise, since batching, shuffling and splitting treat the inputs as one pytree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests_common import backend_compiles

import jaxseq as js
from jaxseq.evaluation import cross_validate

RNG = np.random.default_rng(0)
N, T = 10, 4
A = RNG.normal(size=(N, T, 2)).astype(np.float32)
B = RNG.normal(size=(N, T, 1)).astype(np.float32)
AB = np.concatenate([A, B], -1)
Y = RNG.normal(size=(N, 1)).astype(np.float32)
MASK = np.arange(T)[None, :] < RNG.integers(1, T + 1, N)[:, None]
KW = dict(epochs=2, batch_size=4, verbose=0)


class Joined(nn.Module):  # the one-input reference
    @nn.compact
    def __call__(self, x, *, mask=None):
        return js.Dense(1, name="head")(js.SimpleRNN(2, name="rnn")(x, mask=mask))


class Pair(nn.Module):  # the same model on two inputs
    @nn.compact
    def __call__(self, a, b, *, mask=None):
        x = jnp.concatenate([a, b], -1)
        return js.Dense(1, name="head")(js.SimpleRNN(2, name="rnn")(x, mask=mask))


def _same(tree_a, tree_b):
    jax.tree.map(np.testing.assert_array_equal, tree_a, tree_b)


@pytest.fixture(scope="module")
def reference():
    """One-input fits (shuffled, with validation_split, with a mask) -> (state, history)s."""
    return {"plain": js.fit(Joined(), AB, Y, **KW),
            "split": js.fit(Joined(), AB, Y, validation_split=0.3, **KW),
            "masked": js.fit(Joined(), AB, Y, mask=MASK, **KW)}


@pytest.fixture(scope="module")
def pair():
    return js.fit(Pair(), (A, B), Y, **KW)


def test_a_tuple_of_inputs_trains_as_the_concatenated_input(reference, pair):
    state, history = pair
    _same(state.params, reference["plain"][0].params)
    np.testing.assert_array_equal(history.loss, reference["plain"][1].loss)


def test_a_dict_passes_keywords_and_a_list_is_a_tuple(pair):
    by_name, _ = js.fit(Pair(), {"b": B, "a": A}, Y, **KW)
    as_list, _ = js.fit(Pair(), [A, B], Y, **KW)
    _same(by_name.params, pair[0].params)
    _same(as_list.params, pair[0].params)


def test_predict_and_evaluate_take_the_inputs(reference, pair):
    state, ref = pair[0], reference["plain"][0]
    want = js.predict(Joined(), ref, AB)
    np.testing.assert_array_equal(js.predict(Pair(), state, (A, B)), want)
    np.testing.assert_array_equal(js.predict(Pair(), state, {"a": A, "b": B}, batch_size=3),
                                  js.predict(Joined(), ref, AB, batch_size=3))
    assert js.evaluate(Pair(), state, (A, B), Y, batch_size=3) == js.evaluate(
        Joined(), ref, AB, Y, batch_size=3)


def test_validation_split_and_validation_data_cut_every_input(reference):
    _, split = js.fit(Pair(), (A, B), Y, validation_split=0.3, **KW)
    np.testing.assert_array_equal(split.val_loss, reference["split"][1].val_loss)
    k = 7  # validation_split=0.3 of 10: the first 7 train, the last 3 validate
    _, given = js.fit(Pair(), (A[:k], B[:k]), Y[:k], validation_data=([A[k:], B[k:]], Y[k:]),
                      **KW)
    np.testing.assert_array_equal(given.val_loss, reference["split"][1].val_loss)


def test_one_mask_is_shared_by_the_inputs_with_a_time_axis(reference):
    state, history = js.fit(Pair(), (A, B), Y, mask=MASK, **KW)
    np.testing.assert_array_equal(history.loss, reference["masked"][1].loss)
    with pytest.raises(ValueError, match=r"x\[0\] has 4 steps, x\[1\] 3"):
        js.fit(Pair(), (A, B[:, :3]), Y, mask=MASK, **KW)


def test_fit_replicas_and_cross_validate_take_the_inputs(pair):
    # replica i follows fit(seed=i) to float32 rounding (a vmapped program may order its sums
    # differently: fit_replicas' documented tolerance)
    states, _ = js.fit_replicas(Pair(), (A, B), Y, seeds=[0, 1], strategy="vmap", **KW)
    jax.tree.map(lambda r, f: np.testing.assert_allclose(r[0], f, rtol=1e-6, atol=1e-7),
                 states.params, pair[0].params)
    assert not np.allclose(states.params["head"]["kernel"][0], states.params["head"]["kernel"][1])
    cv = cross_validate(Pair(), (A, B), Y, seeds=1, folds=2, **KW)
    for i, (_, test) in enumerate(cv.splits):  # each split scored on its held-out rows
        state = jax.tree.map(lambda a, i=i: a[i], cv.states)
        held_out = js.evaluate(Pair(), state, (A[test], B[test]), Y[test], batch_size=4)
        np.testing.assert_allclose(cv.scores["loss"][i, 0], held_out, rtol=1e-6)


def test_a_run_with_two_inputs_resumes_from_its_checkpoint(tmp_path, pair):
    pytest.importorskip("orbax.checkpoint")
    d = tmp_path / "run"
    js.fit(Pair(), (A, B), Y, **{**KW, "epochs": 2}, checkpoint_dir=d)
    state, history = js.fit(Pair(), (A, B), Y, **KW, checkpoint_dir=d, resume=True)
    _same(state.params, pair[0].params)
    np.testing.assert_array_equal(history.loss, pair[1].loss)


def test_equal_shapes_share_one_program(pair):
    assert backend_compiles(
        lambda: js.fit(Pair(), (A + 1, B), Y, **{**KW, "epochs": 5}, seed=3)) == 0


@pytest.mark.parametrize(("x", "error", "match"), [
    ((A, B[:7]), ValueError, r"same number of samples .*10, as x\[0\]; got x\[1\] of shape "
                             r"\(7, 4, 1\)"),
    ((A,), ValueError, r"Pair.__call__ takes 2 input\(s\) \(a, b\); got 1"),
    ((A, B, B), ValueError, r"takes 2 input\(s\) \(a, b\); got 3"),
    ((A, "b"), TypeError, r"x\[1\] to be an array; got str"),
    ({"a": A, "c": B}, ValueError, r"x\['c'\] is not an argument"),
    ({"a": A}, ValueError, r"x has no 'b'"),
    ({"a": A, "b": B, "mask": B}, ValueError, r"'mask', a keyword the training core passes"),
])
def test_bad_inputs_are_refused_before_tracing(x, error, match):
    with pytest.raises(error, match=match):
        js.fit(Pair(), x, Y, **KW)


def test_predict_refuses_inputs_of_different_samples(pair):
    with pytest.raises(ValueError, match=r"got x\[1\] of shape \(3, 4, 1\)"):
        js.predict(Pair(), pair[0], (A, B[:3]))


def test_save_model_records_every_input(tmp_path):
    # A registered model of one input, given as a tuple of one: the file records a list of
    # inputs, and load_model rebuilds the model for it and checks the weights against it.
    model = js.Sequential((js.SimpleRNN(2), js.Dense(1)))
    variables = model.init(jax.random.key(0), AB)
    js.save_model(tmp_path / "m", model, variables, x=(AB,))
    _, loaded = js.load_model(tmp_path / "m")
    _same(loaded["params"], variables["params"])
    wider = model.init(jax.random.key(0), AB[..., :2])  # weights for 2 features, not 3
    js.save_model(tmp_path / "w", model, wider, x=[AB])
    with pytest.raises(ValueError, match=r"simple_rnn/kernel: the file has shape \(2, 2\)"):
        js.load_model(tmp_path / "w")
