"""Evaluating skill honestly: data splits, how many repeats, and comparing two models.

Splitters return lists of `(train_indices, test_indices)` NumPy int arrays, equal to
scikit-learn's (tested): `kfold` = `KFold`, `walk_forward` = `TimeSeriesSplit` (expanding
window, or sliding with `max_train_size`; no future data in training), `shuffle_split` =
`ShuffleSplit` (repeated random train/test splits). Shuffling uses NumPy's legacy
`RandomState(seed)`, as scikit-learn does, so the same seed gives the same index sets.

`repeats_curve(scores)` answers "how many repeats are enough?": the mean of the first n scores,
its standard error and a bootstrap interval, for n = 1..N. `compare(a, b)` reports the
difference of means with a bootstrap interval, a test (Welch's t unpaired; paired t and
Wilcoxon signed-rank when the same splits and seeds were used; scipy, the `[stats]` extra) and
an effect size, and a verdict that never claims a difference its interval does not support.
"""

from __future__ import annotations

import math

import numpy as np

from jaxseq import contracts


def _check_n(n: int, k: int, what: str, where: str) -> None:
    contracts.check_positive_int(n, "n_samples", where)
    contracts.check_positive_int(k, what, where)


def kfold(n_samples: int, folds: int = 5, *, shuffle: bool = False, seed: int = 0):
    """k-fold splits of `n_samples` (scikit-learn's `KFold`): contiguous folds (or of a
    shuffled order), the first `n_samples % folds` folds one sample larger."""
    _check_n(n_samples, folds, "folds", "kfold")
    if folds < 2 or folds > n_samples:
        raise ValueError(f"kfold expects 2 <= folds <= n_samples = {n_samples}; got {folds}.")
    indices = np.arange(n_samples)
    if shuffle:
        np.random.RandomState(seed).shuffle(indices)
    sizes = np.full(folds, n_samples // folds)
    sizes[: n_samples % folds] += 1
    splits, start = [], 0
    for size in sizes:
        test = indices[start:start + size]
        splits.append((np.setdiff1d(indices, test) if shuffle else np.concatenate(
            [indices[:start], indices[start + size:]]), test))
        start += size
    if shuffle:  # scikit-learn returns both index sets sorted
        splits = [(np.sort(tr), np.sort(te)) for tr, te in splits]
    return splits


def walk_forward(n_samples: int, n_splits: int = 5, *, test_size: int | None = None,
                 gap: int = 0, max_train_size: int | None = None):
    """Walk-forward splits (scikit-learn's `TimeSeriesSplit`): each test block follows its
    training block in time, `gap` samples apart; training expands from the start, or slides
    with at most `max_train_size` samples."""
    _check_n(n_samples, n_splits, "n_splits", "walk_forward")
    test_size = n_samples // (n_splits + 1) if test_size is None else test_size
    contracts.check_positive_int(test_size, "test_size", "walk_forward")
    if gap < 0 or n_samples - gap - test_size * n_splits <= 0:
        raise ValueError(f"walk_forward: {n_splits} splits of {test_size} test samples after a "
                         f"gap of {gap} leave no training data in {n_samples} samples.")
    indices = np.arange(n_samples)
    splits = []
    for start in range(n_samples - n_splits * test_size, n_samples, test_size):
        end = start - gap
        first = end - max_train_size if max_train_size and max_train_size < end else 0
        splits.append((indices[first:end], indices[start:start + test_size]))
    return splits


def shuffle_split(n_samples: int, n_splits: int = 10, *, test_size: float | int = 0.1,
                  seed: int = 0):
    """Repeated random train/test splits (scikit-learn's `ShuffleSplit`); `test_size` a
    fraction (rounded up) or a count."""
    _check_n(n_samples, n_splits, "n_splits", "shuffle_split")
    n_test = math.ceil(test_size * n_samples) if isinstance(test_size, float) else test_size
    if not 0 < n_test < n_samples:
        raise ValueError(f"shuffle_split expects 0 < test samples < {n_samples}; got {n_test}.")
    rng = np.random.RandomState(seed)
    splits = []
    for _ in range(n_splits):
        order = rng.permutation(n_samples)
        splits.append((order[n_test:], order[:n_test]))
    return splits


def _bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)


def repeats_curve(scores, *, n_boot: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """For n = 1..N repeats (scores in the order they were run): the mean of the first n, its
    standard error (std ddof=1 / sqrt(n); NaN for n = 1) and a 95% percentile-bootstrap
    interval of that mean. Where the interval stops narrowing, more repeats buy little."""
    v = np.asarray(scores, np.float64).ravel()
    if v.size < 1 or not np.all(np.isfinite(v)):
        raise ValueError("repeats_curve expects finite scores (leave failed runs out first).")
    n = np.arange(1, v.size + 1)
    means = np.cumsum(v) / n
    sem = np.array([v[:k].std(ddof=1) / math.sqrt(k) if k > 1 else np.nan for k in n])
    lo, hi = np.array([np.percentile(_bootstrap_means(v[:k], n_boot, seed), [2.5, 97.5])
                       for k in n]).T
    return {"n": n, "mean": means, "sem": sem, "ci_low": lo, "ci_high": hi}


def compare(scores_a, scores_b, *, paired: bool = False, n_boot: int = 10_000, seed: int = 0,
            lower_is_better: bool = True) -> dict:
    """Compare two models' scores (errors by default: lower is better).

    Returns {"diff": mean(a) - mean(b), "ci95": bootstrap interval of the diff, "test",
    "statistic", "p_value" (Welch's t unpaired; paired t when `paired`, plus "wilcoxon_p"),
    "effect_size" (Cohen's d: pooled sd unpaired, sd of the differences paired), "verdict"}.
    `paired` needs the same splits and seeds, in the same order, for both models.
    """
    from scipy import stats

    a, b = np.asarray(scores_a, np.float64).ravel(), np.asarray(scores_b, np.float64).ravel()
    if a.size < 2 or b.size < 2 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("compare expects at least 2 finite scores per model.")
    rng = np.random.default_rng(seed)
    if paired:
        if a.size != b.size:
            raise ValueError(f"compare(paired=True) expects as many scores for both models; "
                             f"got {a.size} and {b.size}.")
        d = a - b
        boot = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
        t = stats.ttest_rel(a, b)
        out = {"test": "paired t", "statistic": float(t.statistic), "p_value": float(t.pvalue),
               "wilcoxon_p": float(stats.wilcoxon(a, b).pvalue),
               "effect_size": float(d.mean() / d.std(ddof=1))}
    else:
        boot = (a[rng.integers(0, a.size, (n_boot, a.size))].mean(axis=1)
                - b[rng.integers(0, b.size, (n_boot, b.size))].mean(axis=1))
        t = stats.ttest_ind(a, b, equal_var=False)
        pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1))
                           / (a.size + b.size - 2))
        out = {"test": "Welch t", "statistic": float(t.statistic), "p_value": float(t.pvalue),
               "effect_size": float((a.mean() - b.mean()) / pooled)}
    diff = float(a.mean() - b.mean())
    lo, hi = (float(q) for q in np.percentile(boot, [2.5, 97.5]))
    if lo <= 0.0 <= hi:
        verdict = (f"no difference the data support: the 95% interval of mean(A) - mean(B), "
                   f"[{lo:.4g}, {hi:.4g}], contains 0")
    else:
        better = "A" if (diff < 0) == lower_is_better else "B"
        verdict = (f"{better} is better by {abs(diff):.4g} on average (95% interval of "
                   f"mean(A) - mean(B): [{lo:.4g}, {hi:.4g}]; {out['test']} p = "
                   f"{out['p_value']:.3g}, effect size {out['effect_size']:.2f})")
    return {"diff": diff, "ci95": (lo, hi), **out, "verdict": verdict}
