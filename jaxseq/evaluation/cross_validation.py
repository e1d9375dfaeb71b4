"""Resampling x seeds in one compiled program: `cross_validate`.

Every (split, seed) pair is one replica of the training loop of `fit_replicas`, vmapped over
the splits (each split's training rows, gathered once on the host) and, inside, over the seeds
(which share their split's data): replica (i, j) follows exactly the computation of
`fit(model, x[train_i], y[train_i], seed=seeds[j], ...)`, to float32 rounding (tested), and is
then scored on its held-out rows `x[test_i]` with Keras' batched `evaluate` semantics.

Splits whose training (and held-out) sets have equal sizes run as one program: k-fold with
`n_samples` divisible by `folds`, `shuffle_split`, walk-forward with a sliding window
(`max_train_size`). Unequal sizes (k-fold's first `n % folds` folds are one sample larger;
walk-forward's expanding window grows by `test_size` per split) run as one program per distinct
size; nothing is padded, truncated or reweighted to force equal sizes, since any of those would
change the batches and so the training of that split.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq.evaluation import splits as splits_mod
from jaxseq.evaluation.replicas import Summary, summarize
from jaxseq.history import History
from jaxseq.training import callbacks as cbs
from jaxseq.training import data as data_mod
from jaxseq.training import loop, parse
from jaxseq.training.compile import cached, jit
from jaxseq.training.data import Batch
from jaxseq.training.drivers import drive
from jaxseq.training.spec import Layout, Program, Source, stack
from jaxseq.training.state import TrainState, check_seeds
from jaxseq.typing import Inputs, Mask, SampleWeight, Seed, Seeds, Targets

__all__ = ["CrossValidation", "cross_validate", "make_splits"]

SPLITTERS = ("kfold", "walk_forward", "shuffle_split")


def make_splits(n_samples: int, splitter="kfold", *, folds: int = 5, n_splits: int = 5,
                test_size=None, gap: int = 0, max_train_size: int | None = None,
                shuffle_folds: bool = False, split_seed: int = 0):
    """The (train, test) index pairs of `splitter`: "kfold" (`folds`, contiguous or with
    `shuffle_folds` seeded by `split_seed`), "walk_forward" (`n_splits`, `test_size`, `gap`,
    `max_train_size`), "shuffle_split" (`n_splits`, `test_size` default 0.1, `split_seed`), or
    (train, test) index arrays given by the caller (a list, a generator, or a scikit-learn
    splitter object: its `.split(X)`; checked)."""
    if isinstance(splitter, str):
        if splitter == "kfold":
            return splits_mod.kfold(n_samples, folds, shuffle=shuffle_folds, seed=split_seed)
        if splitter == "walk_forward":
            return splits_mod.walk_forward(n_samples, n_splits, test_size=test_size, gap=gap,
                                           max_train_size=max_train_size)
        if splitter == "shuffle_split":
            return splits_mod.shuffle_split(n_samples, n_splits, seed=split_seed,
                                            test_size=0.1 if test_size is None else test_size)
        raise ValueError(f"cross_validate expects splitter in {SPLITTERS} or a list of (train, "
                         f"test) index arrays; got {splitter!r}.")
    if hasattr(splitter, "split") and not isinstance(splitter, (list, tuple)):
        splitter = splitter.split(np.zeros((n_samples, 1)))  # e.g. scikit-learn's KFold(5)
    try:
        splitter = list(splitter)
    except TypeError:
        raise TypeError(f"cross_validate expects splitter as one of {SPLITTERS}, an object with "
                        "a .split(X) method (scikit-learn's splitters) or an iterable of "
                        f"(train, test) index arrays; got {type(splitter).__name__}.") from None
    pairs = []
    for i, pair in enumerate(splitter):
        try:
            tr, te = pair
        except (TypeError, ValueError):
            raise ValueError(f"cross_validate: split {i} of splitter must be a (train, test) "
                             f"pair of index arrays; got {str(pair)[:80]!r}.") from None
        try:
            tr, te = np.asarray(tr), np.asarray(te)
        except (TypeError, ValueError) as err:
            raise ValueError(f"cross_validate: split {i}'s indices are not arrays "
                             f"({err}).") from None
        for name, a in (("train", tr), ("test", te)):
            if a.ndim != 1 or a.size == 0 or not np.issubdtype(a.dtype, np.integer) or (
                    a.min() < 0 or a.max() >= n_samples):
                raise ValueError(f"cross_validate: split {i}'s {name} indices must be a "
                                 f"non-empty 1-D int array in [0, {n_samples}); got {a!r}.")
        if np.intersect1d(tr, te).size:
            raise ValueError(f"cross_validate: split {i} has samples in both train and test.")
        pairs.append((tr, te))
    if not pairs:
        raise ValueError("cross_validate got an empty list of splits.")
    return pairs


@dataclasses.dataclass
class CrossValidation:
    """The result of `cross_validate`. Axes: S splits, K seeds, E epochs.

    scores: {"loss", *metrics} -> (S, K) float64 held-out values (NaN where training failed).
    history: a `History` whose entries are (S, K, E) (NaN after a replica stopped).
    states: a `TrainState` whose leaves have a leading (S * K) axis, replica r = split r // K,
      seed r % K (as `fit_replicas`' states: `js.predict(model, states, x)` per replica).
    splits: the (train, test) index arrays; seeds: the K seeds; failed: bool (S, K), True where
      training went non-finite. `failures` lists those (split, seed) pairs;
      `summary()` summarizes each score over the finite runs and counts the others.
    """

    scores: dict[str, np.ndarray]
    history: History
    states: TrainState
    splits: list
    seeds: tuple[int, ...]
    failed: np.ndarray

    @property
    def failures(self) -> list[tuple[int, int]]:
        return [(int(i), self.seeds[j]) for i, j in zip(*np.nonzero(self.failed), strict=True)]

    def summary(self, *, n_boot: int = 10_000, seed: int = 0) -> dict[str, Summary]:
        """{score name: `Summary` over all (split, seed) runs}: mean, std, ..., a bootstrap
        95% interval; failed runs are counted in `n_nonfinite`, never silently dropped."""
        return {k: summarize(v, n_boot=n_boot, seed=seed, failed=self.failed)
                for k, v in self.scores.items()}

    def __str__(self) -> str:
        lines = [f"{len(self.splits)} splits x {len(self.seeds)} seeds, held-out scores:"]
        for k, s in self.summary(n_boot=1000).items():
            lines.append(f"  {k}: mean {s.mean:.6g} (std {s.std:.3g}, 95% CI {s.ci95[0]:.6g} "
                         f"to {s.ci95[1]:.6g}; {s.n} runs, {s.n_nonfinite} failed or "
                         "non-finite)")
        return "\n".join(lines)


def _named(flags: np.ndarray, seeds) -> str:
    """'split i seed s, ...' for the True entries of a (splits, seeds) array."""
    return ", ".join(f"split {i} seed {seeds[j]}" for i, j in zip(*np.nonzero(flags),
                                                                   strict=True))


def _held_out(program: Program, layout: Layout, states, test: Batch, batch_size: int
              ) -> dict[str, np.ndarray]:
    """Keras' batched evaluate of every replica on its split's held-out rows (`test`, a
    leading split axis) -> {name: (R,)}, in the layout's row order."""
    def build():
        one = partial(loop.evaluate_batches, batch_size=batch_size, loss=program.loss,
                      metrics=program.metrics)
        return jit(layout.vmap(one, ("replica", "split")))

    fn = cached("cv_evaluate", program.model, program.loss, program.metrics, batch_size,
                *layout.structure(), build=build)
    values = fn(states, data_mod.as_device(test))
    return {name: np.asarray(v, np.float64) for name, v in values.items()}


@partial(jax.jit, static_argnums=0)
def _gather(which: tuple[int, ...], stacked: tuple, rows: tuple):
    """The stacked states of every (split, seed), split-major: split i's are rows[i] of
    stacked[which[i]] (one driver run's stacked state). One compiled program for every leaf,
    not one eager operation per leaf and split."""
    return jax.tree.map(lambda *leaves: jnp.concatenate(
        [leaves[g][r] for g, r in zip(which, rows, strict=True)]), *stacked)


def cross_validate(
    model: nn.Module,
    x: Inputs,
    y: Targets,
    *,
    epochs: int,
    seeds: Seeds = 1,
    splitter="kfold",
    folds: int = 5,
    n_splits: int = 5,
    test_size: int | float | None = None,
    gap: int = 0,
    max_train_size: int | None = None,
    shuffle_folds: bool = False,
    split_seed: Seed = 0,
    batch_size: int = 32,
    optimizer: optax.GradientTransformation | str | None = None,
    loss: str | Callable = "mse",
    metrics: Sequence = (),
    shuffle: bool = True,
    validation_data: tuple | None = None,
    validation_split: float | None = None,
    validation_batch_size: int | None = None,
    sample_weight: SampleWeight | None = None,
    mask: Mask | None = None,
    callbacks: Sequence[cbs.Callback] = (),
    verbose: int = 0,
    epochs_per_chunk: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> CrossValidation:
    """Train one replica per (split, seed) and score each on its split's held-out samples.

    Args:
      model, x (n, ...), y (n, ...): as in `fit`; splits index the sample (first) axis.
      epochs: epochs per replica (a runtime value).
      seeds: int K meaning `range(K)`, or K distinct int seeds; every split trains every seed.
      splitter: "kfold" (`folds`; `shuffle_folds` with `split_seed` for a shuffled order),
        "walk_forward" (`n_splits`, `test_size` (default n // (n_splits + 1)), `gap`,
        `max_train_size` for a sliding window; scikit-learn's `TimeSeriesSplit`),
        "shuffle_split" (`n_splits` random splits of `test_size` (default 0.1) seeded by
        `split_seed`), or your own list of (train, test) int index arrays.
      batch_size ... epochs_per_chunk, mesh: as in `fit_replicas`, applied to each split's
        training rows (`sample_weight` and `mask` rows follow their samples;
        `validation_split` takes the last fraction of each split's training rows;
        `validation_data` is shared by all). Held-out scores use `loss` and `metrics` with
        Keras' `evaluate` (mini-batches of `batch_size`, the split's weights and mask).
        `mesh`: the seeds are sharded over it (their number divisible by its size).
        callbacks: run once per training program (one per distinct training-set size), their
        `logs` arrays holding one value per replica of that program, in its internal order;
        `stop_training` ends that program only (each run resets it, as every `fit` does).
        `EarlyStopping` stops each (split, seed) on its own; its host-side attributes
        afterwards describe the last program only.

    Returns:
      a `CrossValidation`: `scores` (S, K) per name, `history` (S, K, E), `states`, `failed`,
      `summary()`. A run whose training went non-finite keeps its last finite state; its
      scores are NaN, it is named in a RuntimeWarning and in `failures`, and counted by
      `summary()` (never silently dropped).

    Raises:
      ValueError: a bad value (data, splitter settings, fit options), naming the argument,
        before anything is compiled.
      TypeError: a bad type, naming the argument, before anything is compiled.
    """
    where = "cross_validate"
    seeds = tuple(check_seeds(seeds, where))
    whole = parse.parse_data(where, model, x, y, sample_weight=sample_weight, mask=mask).train
    pairs = make_splits(data_mod.num_samples(whole.x), splitter, folds=folds, n_splits=n_splits,
                        test_size=test_size, gap=gap, max_train_size=max_train_size,
                        shuffle_folds=shuffle_folds, split_seed=split_seed)
    host = parse.parse_host(where, epochs=epochs, verbose=verbose, callbacks=callbacks,
                            epochs_per_chunk=epochs_per_chunk, on_nan="stop")
    tx = parse.parse_optimizer(where, model, optimizer, None)
    parse.check_validation_choice(validation_data, validation_split, where)
    shared_val = data_mod.check_validation(model, validation_data, where)
    trains, vals, tests = [], [], []
    for i, (tr, te) in enumerate(pairs):
        train = loop.take(whole, tr)
        val = None
        if validation_split is not None:
            train, val = data_mod.split_validation(train, validation_split, f"{where} split {i}")
        trains.append(train)
        vals.append(val)
        tests.append(loop.take(whole, te))
    groups: dict[tuple, list[int]] = {}
    for i, (tr, va, te) in enumerate(zip(trains, vals, tests, strict=True)):
        size = (data_mod.num_samples(tr.x), None if va is None else data_mod.num_samples(va.x),
                data_mod.num_samples(te.x))
        groups.setdefault(size, []).append(i)
    # One layout per group of equally sized splits. With a mesh, the replica axis is cut into
    # equal contiguous shards: seeds outermost keeps every shard aligned with whole seeds.
    runs = []
    for members in groups.values():
        layout = Layout(seeds, splits=len(members), seeds_outer=mesh is not None)
        source = Source.per_split([trains[i] for i in members], shared_val if (
            validation_split is None) else [vals[i] for i in members])
        runs.append((members, layout, source, parse.parse_program(
            where, model, tx, source, layout, loss=loss, metrics=metrics,
            batch_size=batch_size, shuffle=shuffle, validation_batch_size=validation_batch_size,
            reset_states=None, mesh=mesh)))

    k, s = len(seeds), len(pairs)
    names = loop.log_names(runs[0][3].metrics, validation_data is not None or
                           validation_split is not None)
    scores = {m: np.full((s, k), np.nan) for m in loop.log_names(runs[0][3].metrics, False)}
    failed = np.zeros((s, k), bool)
    picks, histories, stacked = [None] * s, [None] * s, []
    for members, layout, source, program in runs:
        with warnings.catch_warnings():  # failures are reported below, by (split, seed)
            warnings.filterwarnings("ignore", message=f"{where}: ", category=RuntimeWarning)
            state, history = drive(program, layout, host, source)
        held = _held_out(program, layout, state, stack([tests[i] for i in members]),
                         batch_size)
        rows = layout.table()  # rows[a, j]: the replica of the group's a-th split and seed j
        bad = history.nonfinite[rows]
        for a, i in enumerate(members):
            failed[i] = bad[a]
            for m in scores:
                scores[m][i] = np.where(bad[a], np.nan, held[m][rows[a]])
            picks[i] = (len(stacked), rows[a])  # split i's rows of the driver's stacked states
            histories[i] = {m: history.history[m][rows[a]] for m in names}
        stacked.append(state)
    epochs_run = max(h["loss"].shape[-1] for h in histories)
    history = History({m: np.stack([np.pad(h[m], ((0, 0), (0, epochs_run - h[m].shape[-1])),
                                           constant_values=np.nan) for h in histories])
                       for m in names}, nonfinite=failed)
    result = CrossValidation(scores=scores, history=history,
                             states=_gather(tuple(g for g, _ in picks), tuple(stacked),
                                            tuple(r for _, r in picks)),
                             splits=pairs, seeds=tuple(seeds), failed=failed)
    odd = ~failed & ~np.all([np.isfinite(v) for v in scores.values()], axis=0)
    if odd.any():
        warnings.warn(
            f"{where}: {int(odd.sum())} run(s) trained to finite parameters but scored a "
            f"non-finite held-out value: {_named(odd, seeds)}; summary() leaves them out and "
            "counts them in n_nonfinite.",
            RuntimeWarning, stacklevel=2)
    if failed.any():
        warnings.warn(
            f"{where}: training went non-finite in {int(failed.sum())} of {failed.size} (split, "
            f"seed) runs: {_named(failed, seeds)}. "
            "Each kept its last finite state; its held-out scores are NaN and summary() counts "
            "it in n_nonfinite. Lower the learning rate or clip gradients.",
            RuntimeWarning, stacklevel=2)
    return result
