"""Replicas: `fit` vmapped over seeds, equal to independent fits with every option; skill."""

import chex
import jax
import numpy as np
import optax
import pytest

import jaxseq as js
from jaxseq import checkpointing, models, parallel, problems, replicas, training
from jaxseq.training import programs

SEQ = problems.echo_sequence(5)
SEEDS = [0, 3, 11]


def _replica(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


def _assert_replica_equals_fit(states, history, i, state, h, rtol=1e-6):
    # Batched matmuls may sum in another order than unbatched ones: float32 rounding,
    # documented as 1e-6 relative in jaxseq.training.fit.
    chex.assert_trees_all_close(_replica(states.params, i), state.params, rtol=rtol, atol=1e-7)
    for k, v in h.history.items():
        ran = np.isfinite(history.history[k][i])
        assert ran.sum() == len(v), f"{k}: replica {i} ran {ran.sum()} epochs, fit {len(v)}"
        np.testing.assert_allclose(history.history[k][i][ran], v, rtol=1e-6, atol=1e-9)
    assert int(states.step[i]) == int(state.step)


@pytest.mark.parametrize(
    "framing, build, batch_size",
    [("many_to_many", models.many_to_many, 1), ("one_to_one", models.one_to_one, 2)],
)
def test_replica_i_equals_fit_with_seed_i(framing, build, batch_size):
    x, y = problems.frame(SEQ, framing)
    model = build()
    states, history = training.fit_replicas(model, x, y, seeds=SEEDS, epochs=30,
                                            batch_size=batch_size)
    chex.assert_shape(history.loss, (len(SEEDS), 30))
    np.testing.assert_array_equal(history.epoch, np.arange(30))
    for i, seed in enumerate(SEEDS):
        state, h = js.fit(model, x, y, epochs=30, batch_size=batch_size, seed=seed, verbose=0)
        _assert_replica_equals_fit(states, history, i, state, h)


def test_replicas_have_every_option_of_fit():
    # per-step weights, a mask, validation data with its own weights, shuffle off, mae, a
    # metric, a chunk length that does not divide the epochs, and EarlyStopping that stops
    # each replica at its own epoch and restores its own best weights
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 1)).astype(np.float32)
    y = np.cumsum(x, axis=1).astype(np.float32)
    mask = np.ones((6, 4), bool)
    mask[0, 3:] = mask[4, 2:] = False
    w = rng.uniform(0.5, 1.5, size=(6, 4)).astype(np.float32)
    model = js.Sequential((js.GRU(3, return_sequences=True), js.TimeDistributed(
        js.models.nn.Dense(1))))
    seen = []

    class Recorder(js.Callback):
        def on_train_begin(self, state):
            seen.append("begin")

        def on_epoch_end(self, epoch, logs):
            seen.append((epoch, np.shape(logs["val_mse"])))

        def on_train_end(self, state, history):
            seen.append("end")

    kw = dict(epochs=12, batch_size=4, optimizer=optax.adam(0.05), loss="mae", metrics=["mse"],
              shuffle=False, sample_weight=w, mask=mask, epochs_per_chunk=5,
              validation_data=(x[:3], y[:3], np.ones((3,), np.float32)))
    stop = lambda: js.EarlyStopping(monitor="val_mse", patience=1, restore_best_weights=True)
    es = stop()
    states, history = training.fit_replicas(model, x, y, seeds=SEEDS,
                                            callbacks=[es, Recorder()], **kw)
    assert seen[0] == "begin" and seen[-1] == "end" and seen[1] == (0, (3,))
    stopped = []
    for i, seed in enumerate(SEEDS):
        ref = stop()
        state, h = js.fit(model, x, y, seed=seed, verbose=0, callbacks=[ref], **kw)
        # 1e-5 on the parameters: mae's gradient is a sign, so a rounding-level difference in
        # a residual near 0 flips a term, and this GRU(3)'s tiny products are multiply + sum
        # fusions (`jaxseq.products`) that XLA vectorizes (and contracts to FMAs) differently
        # batched than alone: measured 2.9e-6 relative after 12 epochs at lr 0.05.
        _assert_replica_equals_fit(states, history, i, state, h, rtol=1e-5)
        assert es.stopped_epoch[i] == ref.stopped_epoch and es.best_epoch[i] == ref.best_epoch
        stopped.append(ref.stopped_epoch)
    assert any(0 < e < 11 for e in stopped)  # the stopping rule really stopped some replica


def test_seeds_int_and_stacked_seeds_equal_split_seed():
    init, key = programs.stack_seeds([0, 1, -5, 2**31 - 1, -(2**31)])
    for i, seed in enumerate([0, 1, -5, 2**31 - 1, -(2**31)]):
        ref_init, ref_key = training.split_seed(seed)
        np.testing.assert_array_equal(init[i], ref_init)
        np.testing.assert_array_equal(key[i], ref_key)
    x, y = problems.frame(SEQ, "one_to_one")
    a, ha = training.fit_replicas(models.one_to_one(), x, y, seeds=3, epochs=2, batch_size=5)
    b, hb = training.fit_replicas(models.one_to_one(), x, y, seeds=[0, 1, 2], epochs=2,
                                  batch_size=5)
    chex.assert_trees_all_equal(a.params, b.params)
    with pytest.raises(ValueError, match="seeds that fit in int32; got 1099511627776"):
        training.fit_replicas(models.one_to_one(), x, y, seeds=[2**40], epochs=1)


def test_replicas_are_one_program_not_a_python_loop(monkeypatch):
    calls = []
    original = training.loop._epoch

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(training.loop, "_epoch", counted)
    x, y = problems.frame(SEQ, "many_to_one")
    model = models.many_to_one(5)  # a fresh model object: nothing cached for it yet
    training.fit_replicas(model, x, y, seeds=range(4), epochs=3, batch_size=1)
    assert len(calls) == 1  # the epoch body is traced once for all 4 replicas
    training.fit_replicas(model, x, y, seeds=range(8), epochs=3, batch_size=1)
    # N = 8 retraces the vmapped program once (new shapes), but still one epoch trace, not 8.
    assert len(calls) == 2
    training.fit_replicas(model, x, y, seeds=range(10, 18), epochs=3, batch_size=1)
    assert len(calls) == 2  # same N, other seeds: compiled program reused


def test_replica_checkpoints_resume_bitwise(tmp_path):
    x, y = problems.frame(SEQ, "many_to_many")
    model = models.many_to_many()
    kw = dict(seeds=[1, 2], epochs=6, batch_size=1, epochs_per_chunk=2)
    ref, href = training.fit_replicas(model, x, y, **kw)
    d = tmp_path / "run"
    training.fit_replicas(model, x, y, checkpoint_dir=d, checkpoint_every=2, keep=None, **kw)
    assert sorted(int(p.name) for p in d.iterdir()
                  if p.name != checkpointing.LOCK_NAME) == [2, 4, 6]
    import shutil

    shutil.rmtree(d / "6")
    shutil.rmtree(d / "4")
    state, history = training.fit_replicas(model, x, y, checkpoint_dir=d, checkpoint_every=2,
                                           resume=True, **kw)
    chex.assert_trees_all_equal(state.params, ref.params)
    chex.assert_trees_all_equal(state.opt_state, ref.opt_state)
    np.testing.assert_array_equal(history.loss, href.loss)
    with pytest.raises(ValueError, match=r"written with seed=\[1, 2\]"):
        training.fit_replicas(model, x, y, checkpoint_dir=d, resume=True,
                              **{**kw, "seeds": [1, 3]})


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
    states, _ = training.fit_replicas(model, x, y, seeds=range(3), epochs=2, batch_size=1)
    sk = replicas.skill(model, states.params, x, y, n_boot=100)
    for i in range(3):
        pred = np.asarray(js.predict(model, jax.tree.map(lambda a, i=i: a[i], states.params), x))
        mse = np.mean((pred.astype(np.float64) - y) ** 2)
        assert sk["mse"][0][i] == pytest.approx(mse, rel=1e-6)
        assert sk["rmse"][0][i] == pytest.approx(np.sqrt(mse), rel=1e-6)
        assert sk["mae"][0][i] == pytest.approx(np.mean(np.abs(pred - y)), rel=1e-5)


class Risky(js.models.nn.Module):
    """A Dense head plus exp(1000 p), p ~ N(0, 1) at init: the loss is Inf from the first step
    exactly for the seeds that draw p > 0 (a per-replica failure known in advance)."""

    @js.models.nn.compact
    def __call__(self, x):
        p = self.param("p", js.models.nn.initializers.normal(1.0), ())
        return js.models.nn.Dense(1)(x.reshape(x.shape[0], -1)) + jax.numpy.exp(1e3 * p)


def test_non_finite_replicas_are_counted_named_and_left_out():
    x, y = problems.frame(SEQ, "one_to_one")
    model = Risky()
    seeds = list(range(8))
    bad = np.array([float(model.init(training.split_seed(s)[0], x[:1])["params"]["p"]) > 0
                    for s in seeds])
    assert 0 < bad.sum() < len(seeds)  # a mixture: some replicas fail, others learn
    kw = dict(seeds=seeds, epochs=4, batch_size=5, optimizer=optax.sgd(0.01))
    with pytest.warns(RuntimeWarning, match=r"fit_replicas: replica\(s\) \[\d"):
        states, history = training.fit_replicas(model, x, y, **kw)
    np.testing.assert_array_equal(history.nonfinite, bad)
    assert np.all(np.isnan(history.loss[bad])) and np.all(np.isfinite(history.loss[~bad]))
    for leaf in jax.tree.leaves(states.params):  # every replica keeps its last finite state
        assert np.all(np.isfinite(leaf))
    sk = replicas.skill(model, states, x, y, history=history, n_boot=10)
    summary = sk["mse"][1]
    assert (summary.n, summary.n_nonfinite) == (int((~bad).sum()), int(bad.sum()))
    np.testing.assert_allclose(summary.mean, np.mean(sk["mse"][0][~bad]), rtol=1e-12)
    with pytest.raises(js.NonFiniteLossError, match=r"replica\(s\)") as info:
        training.fit_replicas(model, x, y, on_nan="raise", **kw)
    assert info.value.replicas == tuple(np.flatnonzero(bad))
    assert info.value.state.params["Dense_0"]["kernel"].shape[0] == len(seeds)


def test_replica_parallel_equals_single_device():
    devices = jax.devices("cpu")
    assert len(devices) == 8  # conftest's fake CPU devices, wherever the suite runs
    x, y = problems.frame(SEQ, "many_to_many")
    model = models.many_to_many()
    mesh = parallel.make_mesh(devices)
    sharded, hs = training.fit_replicas(model, x, y, seeds=range(8), epochs=10, batch_size=1,
                                        mesh=mesh)
    single, h1 = training.fit_replicas(model, x, y, seeds=range(8), epochs=10, batch_size=1)
    kernel = sharded.params["lstm"]["kernel"]
    assert len(kernel.sharding.device_set) == 8
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(parallel.AXIS)
    chex.assert_trees_all_close(parallel.to_host(sharded.params), parallel.to_host(single.params),
                                rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(hs.loss, h1.loss, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="seeds divisible by the mesh size 8; got 6"):
        training.fit_replicas(model, x, y, seeds=range(6), epochs=1, batch_size=1, mesh=mesh)


def test_fit_replicas_contracts():
    x, y = problems.frame(SEQ, "one_to_one")
    model = models.one_to_one()
    with pytest.raises(ValueError, match="at least one seed"):
        training.fit_replicas(model, x, y, seeds=[], epochs=1)
    with pytest.raises(ValueError, match=r"distinct seeds; got \[1, 1\]"):
        training.fit_replicas(model, x, y, seeds=[1, 1], epochs=1)
    with pytest.raises(TypeError, match="integer seeds; got 0.5"):
        training.fit_replicas(model, x, y, seeds=[0.5], epochs=1)
    with pytest.raises(ValueError, match=r"y must have shape \(n, 1\); got y \(5,\)"):
        training.fit_replicas(model, x, y[:, 0], seeds=[0], epochs=1)
