"""Evaluating skill honestly: data splits, resampling x seeds in one program, how many repeats,
and comparing two models.

- `kfold`, `walk_forward`, `shuffle_split` (`splits`): index sets equal to scikit-learn's.
- `cross_validate` (`cross_validation`): every (split, seed) pair a replica of one compiled
  training program, scored on its held-out samples.
- `skill`, `summarize` (`replicas`): every replica of `fit_replicas` scored, each score
  summarized over replicas with a bootstrap interval (`jaxseq.replicas` is this module).
- `repeats_curve`, `compare` (`stats`): the mean and its uncertainty as repeats accumulate; the
  difference of two models with a bootstrap interval, a test and a verdict.
"""

from jaxseq.evaluation import replicas
from jaxseq.evaluation.cross_validation import CrossValidation, cross_validate, make_splits
from jaxseq.evaluation.splits import kfold, shuffle_split, walk_forward
from jaxseq.evaluation.stats import compare, repeats_curve

__all__ = [
    "CrossValidation",
    "compare",
    "cross_validate",
    "kfold",
    "make_splits",
    "replicas",
    "repeats_curve",
    "shuffle_split",
    "walk_forward",
]


def __dir__() -> list[str]:
    # the public names only (other submodules are imported by their full names)
    return sorted([*__all__, *(name for name in globals() if name.startswith("__"))])
