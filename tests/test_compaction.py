"""Compaction of the vmapped replicas (`jaxseq.training.compaction`): replicas that stopped leave
the replica batch between chunks; every replica still equals its own `fit`, in the public
(split, seed) order, with a bounded number of compiled loop programs."""

import math
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from tests_common import recording_compiles

import jaxseq as js
from jaxseq import evaluation, training
from jaxseq.training import compaction

SEEDS = [4, 0, 7, 1, 9, 2]  # not sorted: the public order is the order given


def _loops(names):
    """The epoch loop programs among compiled program names: the vmapped `train_loop` and the
    compacted programs of split layouts (`split_train_loop`)."""
    return [n for n in names if "train_loop" in n]


def _data(n):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 5, 1)).astype(np.float32)
    return x, np.cumsum(x, axis=1)[:, -1:, 0]


def _stopper():
    return js.EarlyStopping(patience=2, restore_best_weights=True)


# lr 0.05 makes the validation loss stall within a few epochs, at a different epoch per seed;
# two epochs per chunk let compaction act between stops.
KW = dict(epochs=60, batch_size=4, validation_split=0.25, verbose=0, epochs_per_chunk=2,
          optimizer=js.training.keras_optimizer("adam", learning_rate=0.05))


@pytest.fixture(scope="module")
def replicas():
    x, y = _data(16)
    model = js.Sequential([js.LSTM(3), js.Dense(1)])  # its own object: compiled here first
    es = _stopper()
    with recording_compiles() as compiled:
        states, history = js.fit_replicas(model, x, y, seeds=SEEDS, callbacks=[es],
                                          strategy="vmap", **KW)
    with recording_compiles() as again:
        js.fit_replicas(model, x, y, seeds=SEEDS, callbacks=[_stopper()], strategy="vmap", **KW)
    return model, x, y, es, states, history, _loops(compiled), _loops(again)


def _close_params(got, want, rtol, atol):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def test_compacted_replica_i_equals_fit_with_seed_i(replicas):
    model, x, y, es, states, history, compiled, _ = replicas
    ran = []
    for i, seed in enumerate(SEEDS):
        own = _stopper()
        state, h = js.fit(model, x, y, seed=seed, callbacks=[own], **KW)
        n = len(h.loss)
        for name in ("loss", "val_loss"):  # equal while it ran, then NaN (the padding)
            # 1e-5: at lr 0.05 the vmapped replicas round differently from fit with or
            # without compaction (measured 1.9e-6 relative both ways on a loss of 0.035).
            np.testing.assert_allclose(history.history[name][i, :n], h.history[name],
                                       rtol=1e-5)
            assert np.isnan(history.history[name][i, n:]).all()
        # 1e-5 on the parameters, as for every vmapped replica trained at a high learning
        # rate (tests/test_replicas.py): batched products round differently than alone.
        _close_params(jax.tree.map(lambda a, i=i: a[i], states.params), state.params,
                      rtol=1e-5, atol=1e-6)
        assert int(states.step[i]) == int(state.step)
        assert es.stopped_epoch[i] == own.stopped_epoch and es.best_epoch[i] == own.best_epoch
        ran.append(n)
    assert len(set(ran)) >= 4 and max(ran) < KW["epochs"]  # stopped apart, all early
    assert len(compiled) >= 2  # the batch shrank: a second loop program ran
    assert not history.nonfinite.any()


def test_loop_programs_are_bounded_by_log2_replicas(replicas):
    *_, compiled, again = replicas
    assert len(compiled) <= math.floor(math.log2(len(SEEDS))) + 1
    assert again == []  # the same sizes in a second run: nothing compiles


@pytest.mark.parametrize("total", range(1, 70))
def test_batch_sizes_per_run_are_at_most_floor_log2_plus_one(total):
    # every sequence of live counts, worst case: one replica stops per chunk
    sizes, current = {total}, total
    for live in range(total, 0, -1):
        current = compaction.batch_size(live, current)
        assert live <= current  # every live replica has a row
        sizes.add(current)
    assert len(sizes) <= math.floor(math.log2(total)) + 1
    assert compaction.batch_size(1, total) in (1, total)


def test_cross_validate_compacts_splits_by_seeds_in_public_order():
    x, y = _data(24)
    model = js.Sequential([js.LSTM(3), js.Dense(1)])
    seeds = [3, 8, 1]
    es = _stopper()
    with recording_compiles() as compiled:
        cv = evaluation.cross_validate(model, x, y, folds=4, seeds=seeds, callbacks=[es], **KW)
    # 4 equal splits x 3 seeds = 12 replicas: at most floor(log2 12) + 1 = 4 batch sizes, the
    # first one the layout's nested (split, seed) program, the others compacted flat programs
    assert 1 <= len(_loops(compiled)) <= 3
    assert set(_loops(compiled)) == {"jit(split_train_loop)"}
    ran = set()
    for i, (tr, _) in enumerate(cv.splits):
        for j, seed in enumerate(seeds):
            state, h = js.fit(model, x[tr], y[tr], seed=seed, callbacks=[_stopper()], **KW)
            n = len(h.loss)
            for name in ("loss", "val_loss"):  # per-split validation data (validation_split)
                np.testing.assert_allclose(cv.history.history[name][i, j, :n], h.history[name],
                                           rtol=1e-5)  # cross_validate's pin
                assert np.isnan(cv.history.history[name][i, j, n:]).all()
            row = i * len(seeds) + j  # (split, seed) rows, seeds innermost
            replica = jax.tree.map(lambda a, r=row: a[r], cv.states.params)
            _close_params(replica, state.params, rtol=1e-4, atol=1e-6)
            ran.add(n)
    assert len(ran) >= 4 and not cv.failed.any()


GROW, LR = 0.2, 0.1


class Doomed(nn.Module):
    """SimpleRNN(3) and Dense(1), plus 0 * exp(p) for a scalar parameter p ~ N(0, 1) that no
    gradient reaches and the optimizer (`_growing`) multiplies by 1 + GROW each step: for the
    seeds that draw p0 > 0, exp(p) overflows and the output turns NaN at the first step where
    p0 (1 + GROW)^step > log(float32 max). Replicas fail at their own epochs, known in advance
    from p0 alone, whatever the rounding of the programs (the machine, the optimization level,
    vmapped or alone)."""

    @nn.compact
    def __call__(self, x):
        p = self.param("p", nn.initializers.normal(1.0), ())
        return nn.Dense(1)(js.SimpleRNN(3)(x)) + 0.0 * jnp.exp(jax.lax.stop_gradient(p))


def _growing():
    """SGD, and p <- p (1 + GROW) each step (a negative weight decay on p alone)."""
    only_p = lambda params: {k: jax.tree.map(lambda _, k=k: k == "p", v)
                             for k, v in params.items()}
    return optax.chain(optax.add_decayed_weights(-GROW / LR, mask=only_p), optax.sgd(LR))


@pytest.fixture(scope="module")
def diverging():
    x, y = _data(16)
    model = Doomed()
    seeds = list(range(8))
    p0 = np.array([float(model.init(training.split_seed(s)[0], x[:1])["params"]["p"])
                   for s in seeds], np.float64)
    # exp(p) overflows at the first (0-based) step k with p0 (1 + GROW)^k > log(float32 max),
    # k = floor(overflow) + 1; an epoch is 4 steps
    with np.errstate(invalid="ignore"):
        overflow = np.log(np.log(np.finfo(np.float32).max) / p0) / np.log1p(GROW)
    kw = dict(seeds=seeds, epochs=30, batch_size=4, verbose=0, epochs_per_chunk=2,
              optimizer=_growing())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = js.fit_replicas(model, x, y, strategy="concurrent", **kw)
    failed = tuple(int(r) for r in np.flatnonzero(ref[1].nonfinite))
    runs = {}
    with recording_compiles() as compiled:
        with pytest.warns(RuntimeWarning, match=re.escape(f"replica(s) {list(failed)}")):
            runs["stop"] = js.fit_replicas(model, x, y, strategy="vmap", **kw)
        with pytest.raises(js.NonFiniteLossError) as err:
            js.fit_replicas(model, x, y, strategy="vmap", on_nan="raise", **kw)
        runs["raise"] = (err.value.state, err.value.history)
    return ref, failed, (p0, overflow), runs, err.value.replicas, _loops(compiled)


def test_the_doomed_replicas_fail_where_their_initial_parameter_says(diverging):
    (_, ref), failed, (p0, overflow), *_ = diverging
    assert failed == tuple(np.flatnonzero(p0 > 0))
    doomed = p0 > 0
    # no overflow step within 1e-4 of an integer: float32 rounding of p cannot move it
    assert np.all(np.abs(overflow[doomed] - np.round(overflow[doomed])) > 1e-4)
    epochs_run = np.isfinite(ref.loss).sum(axis=1)
    np.testing.assert_array_equal(epochs_run[doomed], (np.floor(overflow[doomed]) + 1) // 4)
    assert np.all(epochs_run[~doomed] == 30)
    assert len(set(epochs_run[doomed])) >= 3  # they fail apart, chunk after chunk


@pytest.mark.parametrize("on_nan", ["stop", "raise"])
def test_non_finite_replicas_keep_their_flags_and_order(diverging, on_nan):
    (ref_states, ref), failed, _, runs, raised, compiled = diverging
    # 3 or 4 of the 8 survive: they fit a batch of 4 (half of 8, so compaction acts) and never
    # a batch of 2, so exactly two loop programs run: 8 rows, then the survivors in 4
    assert 2 < len(ref.nonfinite) - len(failed) <= len(ref.nonfinite) // 2
    assert compiled == ["jit(train_loop)"] * 2
    assert raised == failed
    states, history = runs[on_nan]
    np.testing.assert_array_equal(history.nonfinite, ref.nonfinite)
    np.testing.assert_array_equal(np.isfinite(history.loss), np.isfinite(ref.loss))
    np.testing.assert_allclose(history.loss, ref.loss, rtol=1e-5)
    _close_params(states.params, ref_states.params, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("units, batch_size, epochs_per_chunk, stopper, expected", [
    (32, 32, None, True, True),  # the forecaster: 4,385 parameters x 32 rows
    (5, 1, None, True, False),  # the tutorial's LSTM(5): a look costs more than it saves
    (32, 32, 100, True, False),  # the chunk length asked for is kept
    (32, 32, None, False, False),  # no EarlyStopping: nothing to look for between chunks
])
def test_the_host_looks_for_stopped_replicas_only_where_it_pays(units, batch_size,
                                                                 epochs_per_chunk, stopper,
                                                                 expected):
    from jaxseq.training.parse import parse_host
    from jaxseq.training.spec import Layout

    model = js.Sequential([js.LSTM(units), js.Dense(1)])
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 12, 1), np.float32))["params"]
    replicas = jax.tree.map(lambda a: np.stack([a, a, a]), params)  # (R=3, ...) leaves
    host = parse_host("fit_replicas", epochs=1000, verbose=0,
                      callbacks=[_stopper()] if stopper else [],
                      epochs_per_chunk=epochs_per_chunk, on_nan="stop")
    state = type("State", (), {"params": replicas})
    program = type("Program", (), {"batch_size": batch_size})
    assert compaction.looks(host, state, Layout((0, 1, 2)), program, n=200) is expected
    if expected:
        assert host.compact_every == compaction.CHECK_EVERY
