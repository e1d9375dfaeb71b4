"""Replicas: one compiled program over seeds, equal to independent fits; skill statistics."""

import chex
import jax
import numpy as np
import pytest

import jaxseq as js
from jaxseq import models, parallel, problems, replicas, training

SEQ = problems.echo_sequence(5)
SEEDS = [0, 3, 11]


@pytest.mark.parametrize(
    "framing, build, batch_size",
    [("many_to_many", models.many_to_many, 1), ("one_to_one", models.one_to_one, 2)],
)
def test_replica_i_equals_fit_with_seed_i(framing, build, batch_size):
    x, y = problems.frame(SEQ, framing)
    model = build()
    states, history = replicas.fit_replicas(model, x, y, seeds=SEEDS, epochs=30,
                                            batch_size=batch_size)
    chex.assert_shape(history.loss, (len(SEEDS), 30))
    for i, seed in enumerate(SEEDS):
        state, h = js.fit(model, x, y, epochs=30, batch_size=batch_size, seed=seed, verbose=0)
        # Batched matmuls may sum in another order than unbatched ones: float32 rounding,
        # documented as 1e-6 relative in jaxseq.replicas.
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], states.params),
                                    state.params, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(history.loss[i], h.loss, rtol=1e-6, atol=1e-9)
        assert int(states.step[i]) == int(state.step)


@pytest.mark.parametrize("x64", [False, True])
@pytest.mark.parametrize("seeds", [[0, 1, -5, 2**31 - 1, -(2**31)], [2**40, 7]])
def test_stacked_seeds_equal_split_seed_per_seed(seeds, x64):
    # int32 seeds take one compiled vmap of split_seed; wider ones a loop: the same keys, with
    # and without 64-bit mode (where split_seed(int) takes a negative seed as int64).
    with jax.enable_x64(x64):
        _check_stacked_seeds(seeds)


def _check_stacked_seeds(seeds):
    init, keys = replicas._stack_seeds(seeds)
    for i, seed in enumerate(seeds):
        ref_init, ref_keys = training.split_seed(seed)
        np.testing.assert_array_equal(np.asarray(init[i]), np.asarray(ref_init))
        for got, ref in zip(keys, ref_keys, strict=True):
            np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(ref))


def _trace_counter():
    """Count traces of the batched training program (a Python side effect runs per trace)."""
    calls = []
    original = training.Program.checked_epoch

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    return calls, counted


def test_replicas_are_one_program_not_a_python_loop(monkeypatch):
    calls, counted = _trace_counter()
    monkeypatch.setattr(training.Program, "checked_epoch", counted)
    x, y = problems.frame(SEQ, "many_to_one")
    model = models.many_to_one(5)  # a fresh model object: nothing cached for it yet
    replicas.fit_replicas(model, x, y, seeds=range(4), epochs=3, batch_size=1)
    assert len(calls) == 1  # the epoch body is traced once for all 4 replicas
    replicas.fit_replicas(model, x, y, seeds=range(8), epochs=3, batch_size=1)
    # N = 8 retraces the vmapped program once (new shapes), but still one epoch trace, not 8.
    assert len(calls) == 2
    replicas.fit_replicas(model, x, y, seeds=range(10, 18), epochs=3, batch_size=1)
    assert len(calls) == 2  # same N, other seeds: compiled program reused


def test_skill_statistics_equal_numpy():
    rng = np.random.default_rng(0)
    v = rng.lognormal(size=12)
    s = replicas.summarize(v, n_boot=2000, seed=1)
    assert s.mean == pytest.approx(np.mean(v))
    assert s.std == pytest.approx(np.std(v, ddof=1))
    assert (s.min, s.median, s.max) == pytest.approx((v.min(), np.median(v), v.max()))
    boot = v[np.random.default_rng(1).integers(0, v.size, (2000, v.size))].mean(axis=1)
    assert s.ci95 == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    assert s.ci95[0] <= s.mean <= s.ci95[1]
    assert (s.n, s.n_nonfinite) == (12, 0)
    w = np.concatenate([v, [np.nan, np.inf]])
    t = replicas.summarize(w, n_boot=2000, seed=1)
    assert (t.n, t.n_nonfinite) == (12, 2)
    assert t.mean == pytest.approx(s.mean)


def test_skill_scores_per_replica():
    x, y = problems.frame(SEQ, "many_to_many")
    model = models.many_to_many()
    states, _ = replicas.fit_replicas(model, x, y, seeds=range(3), epochs=2, batch_size=1)
    sk = replicas.skill(model, states.params, x, y, n_boot=100)
    for i in range(3):
        pred = np.asarray(js.predict(model, jax.tree.map(lambda a, i=i: a[i], states.params), x))
        mse = np.mean((pred.astype(np.float64) - y) ** 2)
        assert sk["mse"][0][i] == pytest.approx(mse, rel=1e-6)
        assert sk["rmse"][0][i] == pytest.approx(np.sqrt(mse), rel=1e-6)
        assert sk["mae"][0][i] == pytest.approx(np.mean(np.abs(pred - y)), rel=1e-5)


def test_non_finite_replicas_are_counted():
    import optax

    x, y = problems.frame(SEQ, "one_to_one")
    model = models.one_to_one()
    # A learning rate this large overflows some replicas within a few epochs.
    states, history = replicas.fit_replicas(model, x, y, seeds=range(4), epochs=5,
                                            batch_size=5, optimizer=optax.sgd(1e30))
    nonfinite = ~np.all(np.isfinite(history.loss), axis=1)
    assert nonfinite.any()
    for leaf in jax.tree.leaves(states.params):  # every replica keeps its last finite state
        assert np.all(np.isfinite(leaf))
    sk = replicas.skill(model, states.params, x, y, n_boot=10)
    assert sk["rmse"][1].n + sk["rmse"][1].n_nonfinite == 4


def test_replica_parallel_equals_single_device():
    assert len(jax.devices()) == 8
    x, y = problems.frame(SEQ, "many_to_many")
    model = models.many_to_many()
    mesh = parallel.make_mesh()
    sharded, hs = replicas.fit_replicas(model, x, y, seeds=range(8), epochs=10, batch_size=1,
                                        mesh=mesh)
    single, h1 = replicas.fit_replicas(model, x, y, seeds=range(8), epochs=10, batch_size=1)
    kernel = sharded.params["lstm"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(parallel.AXIS)
    chex.assert_trees_all_close(parallel.to_host(sharded.params), parallel.to_host(single.params),
                                rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(hs.loss, h1.loss, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="divisible by the mesh size 8; got 6 replicas"):
        replicas.fit_replicas(model, x, y, seeds=range(6), epochs=1, batch_size=1, mesh=mesh)


def test_fit_replicas_contracts():
    x, y = problems.frame(SEQ, "one_to_one")
    model = models.one_to_one()
    with pytest.raises(ValueError, match="at least one seed"):
        replicas.fit_replicas(model, x, y, seeds=[], epochs=1)
    with pytest.raises(ValueError, match=r"distinct seeds; got \[1, 1\]"):
        replicas.fit_replicas(model, x, y, seeds=[1, 1], epochs=1)
    with pytest.raises(TypeError, match="integer seeds; got 0.5"):
        replicas.fit_replicas(model, x, y, seeds=[0.5], epochs=1)
    with pytest.raises(ValueError, match=r"y must have shape \('n', 1\); got y \(5,\)"):
        replicas.fit_replicas(model, x, y[:, 0], seeds=[0], epochs=1)
