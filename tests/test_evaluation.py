"""Splitters equal scikit-learn's index sets; repeats_curve and compare equal NumPy / scipy."""

import numpy as np
import pytest

from jaxseq import evaluation

sklearn = pytest.importorskip("sklearn.model_selection")
stats = pytest.importorskip("scipy.stats")


def _same(ours, theirs):
    theirs = list(theirs)
    assert len(ours) == len(theirs)
    for (tr, te), (str_, ste) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(tr, str_)
        np.testing.assert_array_equal(te, ste)


@pytest.mark.parametrize("n, k", [(10, 5), (11, 3), (7, 7)])
@pytest.mark.parametrize("shuffle, seed", [(False, 0), (True, 0), (True, 42)])
def test_kfold_equals_sklearn(n, k, shuffle, seed):
    kf = sklearn.KFold(k, shuffle=shuffle, random_state=seed if shuffle else None)
    _same(evaluation.kfold(n, k, shuffle=shuffle, seed=seed), kf.split(np.zeros(n)))


@pytest.mark.parametrize("kw", [{}, {"test_size": 2}, {"gap": 2}, {"max_train_size": 4},
                                {"test_size": 3, "gap": 1, "max_train_size": 5}])
def test_walk_forward_equals_time_series_split(kw):
    n = 23
    tss = sklearn.TimeSeriesSplit(n_splits=4, **kw)
    ours = evaluation.walk_forward(n, 4, **kw)
    _same(ours, tss.split(np.zeros(n)))
    for train, test in ours:  # no future data in training
        assert train.max() < test.min()


@pytest.mark.parametrize("test_size, seed", [(0.25, 0), (0.1, 3), (4, 7)])
def test_shuffle_split_equals_sklearn(test_size, seed):
    ss = sklearn.ShuffleSplit(n_splits=5, test_size=test_size, random_state=seed)
    _same(evaluation.shuffle_split(17, 5, test_size=test_size, seed=seed), ss.split(np.zeros(17)))


def test_splitter_errors():
    with pytest.raises(ValueError, match="2 <= folds <= n_samples = 3; got 4"):
        evaluation.kfold(3, 4)
    with pytest.raises(ValueError, match="leave no training data"):
        evaluation.walk_forward(5, 4, test_size=2)


def test_repeats_curve_equals_numpy():
    v = np.random.default_rng(0).normal(1.0, 0.3, size=12)
    c = evaluation.repeats_curve(v, n_boot=500, seed=1)
    np.testing.assert_allclose(c["mean"], [v[:k].mean() for k in range(1, 13)])
    np.testing.assert_allclose(c["sem"][1:], [v[:k].std(ddof=1) / np.sqrt(k)
                                              for k in range(2, 13)])
    assert np.isnan(c["sem"][0])
    assert np.all(c["ci_low"] <= c["mean"] + 1e-12) and np.all(c["mean"] <= c["ci_high"] + 1e-12)
    boot = v[np.random.default_rng(1).integers(0, 12, (500, 12))].mean(axis=1)  # seed 1
    np.testing.assert_allclose([c["ci_low"][-1], c["ci_high"][-1]],
                               np.percentile(boot, [2.5, 97.5]))


def test_compare_equals_scipy_and_never_overclaims():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 0.2, 15), rng.normal(1.3, 0.2, 15)
    r = evaluation.compare(a, b)
    t = stats.ttest_ind(a, b, equal_var=False)
    assert r["statistic"] == pytest.approx(t.statistic) and r["p_value"] == pytest.approx(t.pvalue)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    assert r["ci95"][1] < 0 and r["verdict"].startswith("A is better")
    b2 = a + rng.normal(0.05, 0.02, 15)
    p = evaluation.compare(a, b2, paired=True)
    t2 = stats.ttest_rel(a, b2)
    assert p["statistic"] == pytest.approx(t2.statistic) and p["p_value"] == pytest.approx(
        t2.pvalue)
    assert p["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b2).pvalue)
    d = a - b2
    assert p["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    same = evaluation.compare(a, a[::-1])  # the same scores: no difference can be claimed
    assert same["ci95"][0] <= 0 <= same["ci95"][1] and same["verdict"].startswith("no diff")
    for res in (r, p, same):  # the verdict follows the interval, never the other way
        assert (res["ci95"][0] <= 0 <= res["ci95"][1]) == res["verdict"].startswith(
            "no difference")
    # 3 repeats, clearly apart for the bootstrap, not for the t-test: no winner is named
    few = evaluation.compare([0.30, 0.36, 0.30], [0.25, 0.29, 0.24])
    t3 = stats.ttest_ind([0.30, 0.36, 0.30], [0.25, 0.29, 0.24], equal_var=False)
    assert few["ci95"][0] > 0 and t3.pvalue >= 0.05
    assert few["verdict"].startswith("not established") and "better" not in few["verdict"]
