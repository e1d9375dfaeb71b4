"""cross_validate: each (split, seed) replica equals its own `fit` + `evaluate`; splits are the
splitters' (scikit-learn's) index sets; a failed split is named and counted, never dropped."""

import warnings

import jax
import numpy as np
import pytest

import jaxseq as js
from jaxseq import evaluation

EPOCHS, BS = 4, 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    x = rng.rand(18, 5, 1).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 18).astype(np.float32)
    return js.models.many_to_many(), x, x[:, ::-1].copy(), w


def _fit_alone(model, x, y, w, tr, te, seed, **kw):
    state, hist = js.fit(model, x[tr], y[tr], sample_weight=w[tr], seed=seed, epochs=EPOCHS,
                         batch_size=BS, verbose=0, metrics=["mae"], **kw)
    held = js.evaluate(model, state, x[te], y[te], sample_weight=w[te],
                       batch_size=min(BS, len(te)), metrics=["mae"], return_dict=True)
    return hist, held, state


CV_KW = dict(folds=4, seeds=[3, 8], epochs=EPOCHS, batch_size=BS, metrics=["mae"])


@pytest.fixture(scope="module")
def cv4(data):
    # 18 samples in 4 folds: sizes 5, 5, 4, 4, so two programs (training sets of 13 and 14).
    model, x, y, w = data
    return evaluation.cross_validate(model, x, y, sample_weight=w, **CV_KW)


def test_every_replica_equals_its_own_fit(data, cv4):
    model, x, y, w = data
    cv = cv4
    assert cv.scores["loss"].shape == (4, 2) and cv.history.loss.shape == (4, 2, EPOCHS)
    assert jax_leading(cv.states) == 8 and not cv.failed.any()
    for (i, j) in [(0, 1), (3, 0)]:  # one replica of each program
        tr, te = cv.splits[i]
        hist, held, state = _fit_alone(model, x, y, w, tr, te, cv.seeds[j])
        np.testing.assert_allclose(cv.history.loss[i, j], hist.loss, rtol=1e-5)
        replica = jax.tree.map(lambda a, r=i * 2 + j: a[r], cv.states.params)
        for got, want in zip(jax.tree.leaves(replica), jax.tree.leaves(state.params),
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(cv.scores["loss"][i, j], held["loss"], rtol=1e-5)
        np.testing.assert_allclose(cv.scores["mae"][i, j], held["mae"], rtol=1e-5)
    # seeds differ within a split, splits differ for one seed
    assert len(np.unique(cv.scores["loss"])) == 8


def test_mesh_puts_seeds_outermost_and_changes_nothing(data, cv4):
    model, x, y, w = data
    mesh = js.parallel.make_mesh(jax.devices()[:2])  # 4 splits x 2 seeds: seeds outermost
    cv = evaluation.cross_validate(model, x, y, sample_weight=w, mesh=mesh, **CV_KW)
    np.testing.assert_allclose(cv.scores["loss"], cv4.scores["loss"], rtol=1e-5)
    np.testing.assert_allclose(cv.history.loss, cv4.history.loss, rtol=1e-5)
    leaf = jax.tree.leaves(cv.states.params)[0]
    np.testing.assert_allclose(leaf, jax.tree.leaves(cv4.states.params)[0], rtol=1e-5,
                               atol=1e-6)


def jax_leading(tree):
    return {a.shape[0] for a in jax.tree.leaves(tree)}.pop()


def test_walk_forward_with_validation_split_equals_fit(data):
    model, x, y, w = data
    cv = evaluation.cross_validate(model, x, y, sample_weight=w, splitter="walk_forward",
                                   n_splits=3, test_size=3, gap=1, max_train_size=8, seeds=2,
                                   validation_split=0.25, epochs=EPOCHS, batch_size=BS,
                                   metrics=["mae"])
    assert [(list(a), list(b)) for a, b in cv.splits] == [
        (list(a), list(b)) for a, b in evaluation.walk_forward(18, 3, test_size=3, gap=1,
                                                               max_train_size=8)]
    for tr, te in cv.splits:
        assert tr.max() + 1 < te.min()  # no future data, and the gap
    tr, te = cv.splits[1]
    hist, held, _ = _fit_alone(model, x, y, w, tr, te, 1, validation_split=0.25)
    np.testing.assert_allclose(cv.history.val_loss[1, 1], hist.val_loss, rtol=1e-5)
    np.testing.assert_allclose(cv.scores["loss"][1, 1], held["loss"], rtol=1e-5)


def test_shared_validation_data_and_a_scikit_learn_splitter(data):
    sklearn = pytest.importorskip("sklearn.model_selection")
    model, x, y, w = data
    val = (x[:5] + 0.5, y[:5])
    cv = evaluation.cross_validate(model, x, y, sample_weight=w, splitter=sklearn.KFold(3),
                                   validation_data=val, seeds=[2], epochs=EPOCHS, batch_size=BS)
    assert cv.history.val_loss.shape == (3, 1, EPOCHS)
    tr, te = cv.splits[2]
    np.testing.assert_array_equal(te, np.arange(12, 18))  # KFold(3)'s last fold
    state, hist = js.fit(model, x[tr], y[tr], sample_weight=w[tr], seed=2, epochs=EPOCHS,
                         batch_size=BS, verbose=0, validation_data=val)
    np.testing.assert_allclose(cv.history.val_loss[2, 0], hist.val_loss, rtol=1e-5)


def test_failed_split_is_named_and_counted(data):
    model, x, y, _ = data
    y = y.copy()
    y[0] = 1e20  # finite, but its squared error overflows float32: split 1 trains on it
    splits = [(np.arange(6, 12), np.arange(12, 18)), (np.arange(0, 6), np.arange(12, 18))]
    with pytest.warns(RuntimeWarning, match=r"2 of 4 \(split, seed\) runs: split 1 seed 5, "
                                            r"split 1 seed 9"):
        cv = evaluation.cross_validate(model, x, y, splitter=splits, seeds=[5, 9],
                                       epochs=EPOCHS, batch_size=BS)
    assert cv.failed.tolist() == [[False, False], [True, True]]
    assert cv.failures == [(1, 5), (1, 9)]  # seed values, not their indices
    assert np.isnan(cv.scores["loss"][1]).all() and np.isfinite(cv.scores["loss"][0]).all()
    s = cv.summary(n_boot=100)["loss"]
    assert (s.n, s.n_nonfinite) == (2, 2)
    np.testing.assert_allclose(s.mean, cv.scores["loss"][0].mean())


@pytest.mark.parametrize("kw, programs", [
    ({"splitter": "shuffle_split", "n_splits": 3, "test_size": 6}, 1),  # equal sizes
    ({"splitter": "kfold"}, 2),  # training sets of 13 and 14 samples
])
def test_one_program_per_training_set_size(data, monkeypatch, kw, programs):
    model, x, y, w = data
    built = []
    original = js.training.programs.loop_program

    def counting(*args, **kwargs):
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(js.training.programs, "loop_program", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cv = evaluation.cross_validate(model, x, y, sample_weight=w, **{**CV_KW, **kw})
    assert len(built) == programs and np.isfinite(cv.scores["loss"]).all()


@pytest.mark.parametrize("kw, match", [
    ({"splitter": "loo"}, "splitter in"),
    ({"splitter": [(np.arange(5), np.arange(4, 8))]}, "both train and test"),
    ({"splitter": [(np.arange(5), np.arange(17, 19))]}, r"in \[0, 18\)"),
    ({"splitter": []}, "empty list"),
    ({"folds": 19}, "folds <= n_samples"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"seeds": 3, "mesh": "2 devices"}, "seeds divisible by the mesh size 2"),
    ({"validation_split": 0.2, "validation_data": "given"}, "both validation_data"),
])
def test_errors_before_compiling(data, kw, match):
    model, x, y, _ = data
    if kw.get("validation_data") == "given":
        kw["validation_data"] = (x, y)
    if kw.get("mesh") == "2 devices":
        kw["mesh"] = js.parallel.make_mesh(jax.devices()[:2])
    with pytest.raises(ValueError, match=match):
        evaluation.cross_validate(model, x, y, epochs=1, **kw)
