"""Data splits for evaluating skill, equal to scikit-learn's index sets (tested).

Each splitter returns a list of `(train_indices, test_indices)` NumPy int arrays: `kfold` =
`KFold`, `walk_forward` = `TimeSeriesSplit` (expanding window, or sliding with
`max_train_size`; no future data in training), `shuffle_split` = `ShuffleSplit` (repeated random
train/test splits). Shuffling uses NumPy's legacy `RandomState(seed)`, as scikit-learn does, so
the same seed gives the same index sets.
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
