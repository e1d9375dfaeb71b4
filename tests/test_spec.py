"""A run's shape (`jaxseq.training.spec`, built by `jaxseq.training.parse`): the replica
layout's row order and its vmap, the program-cache key, and the driver run on a layout cut into
chunks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js
from jaxseq import training
from jaxseq.training import parse, programs
from jaxseq.training.spec import Layout, Source

SEEDS = (3, 8)


def _pairs(outer: bool, splits: int, seeds=SEEDS):
    """(split, seed) of every replica row, in the documented order, enumerated by hand."""
    k = len(seeds)
    return [(r % splits, seeds[r // splits]) if outer else (r // k, seeds[r % k])
            for r in range(splits * k)]


@pytest.mark.parametrize("outer", [False, True])
def test_layout_rows_name_each_split_and_seed(outer):
    layout = Layout(SEEDS, splits=3, seeds_outer=outer)
    pairs = _pairs(outer, 3)
    assert layout.size == 6
    assert list(zip(layout.row_splits.tolist(), layout.row_seeds, strict=True)) == pairs
    table = layout.table()
    assert table.shape == (3, 2)
    for r, (i, seed) in enumerate(pairs):
        assert table[i, SEEDS.index(seed)] == r
    one = Layout.single(5)
    assert (one.size, one.axis_name, one.row_seeds) == (1, None, (5,))
    assert Layout(SEEDS).row_seeds == SEEDS and Layout(SEEDS).axis_name == "replica"


@pytest.mark.parametrize("outer", [False, True])
def test_layout_vmap_gives_each_replica_its_own_row_and_its_split(outer):
    layout = Layout((0, 1, 2), splits=2, seeds_outer=outer)
    own = np.arange(6, dtype=np.float32) * 10  # (R,)
    per_split = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)  # (S, 2)
    fn = layout.vmap(lambda a, d, c: a + d.sum() * c, ("replica", "split", None))
    got = np.asarray(jax.jit(fn)(own, per_split, np.float32(0.5)))
    want = [own[r] + per_split[i].sum() * 0.5 for r, (i, _) in enumerate(
        _pairs(outer, 2, (0, 1, 2)))]
    np.testing.assert_allclose(got, want)
    # without splits every replica sees the whole (shared) data
    plain = Layout((0, 1, 2)).vmap(lambda a, d: a + d.sum(), ("replica", "split"))
    np.testing.assert_allclose(plain(own[:3], per_split), own[:3] + 11.0)


def test_layouts_and_sources_refuse_inconsistent_values():
    with pytest.raises(TypeError, match="seeds as a non-empty tuple of ints"):
        Layout([0, 1])
    with pytest.raises(ValueError, match="a single run .* has one seed and no splits"):
        Layout((0, 1), replicated=False)
    with pytest.raises(ValueError, match="splits to be an int >= 0"):
        Layout((0,), splits=-1)
    x = np.zeros((3, 4, 2, 1), np.float32)
    with pytest.raises(ValueError, match="leading split axis of 2; got x of shape"):
        Source(training.Batch(x, x[..., 0], None), splits=2)
    assert [c.seeds for c in Layout((1, 2, 3, 4, 5)).chunks(2)] == [(1, 2), (3, 4), (5,)]


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 1)).astype(np.float32)
    y = rng.normal(size=(6, 1)).astype(np.float32)
    model = js.Sequential((js.SimpleRNN(2), js.Dense(1)))
    data = parse.parse_data("fit", model, x, y)
    tx = parse.parse_optimizer("fit", model, None, None)

    def program(layout, **kw):
        options = dict(loss="mse", metrics=["mae"], batch_size=4, shuffle=True,
                       validation_batch_size=None, reset_states=None, mesh=None)
        return parse.parse_program("fit", model, tx, data, layout, **{**options, **kw})

    return model, data, program


def test_the_program_is_the_cache_key_and_runtime_values_stay_out_of_it(case):
    _, _, program = case
    a, b = program(Layout.single(0)), program(Layout.single(7))
    assert a == b and a.key() == b.key()  # the seed is a runtime value
    assert programs.loop_program(a, Layout.single(0)) is programs.loop_program(
        b, Layout.single(7))
    big = program(Layout.single(0), batch_size=32)
    assert big.batch_size == 6 and big == program(Layout.single(0), batch_size=64)
    assert program(Layout.single(0), batch_size=3) != a
    assert program(Layout.single(0), loss="mae") != a
    replicas = programs.loop_program(a, Layout((0, 1)))
    assert replicas is not programs.loop_program(a, Layout.single(0))
    assert replicas is programs.loop_program(a, Layout((5, 6, 7)))  # seeds: runtime values
    with pytest.raises(ValueError, match=r"fit expects batch_size >= 1; got 0"):
        program(Layout.single(0), batch_size=0)


def test_a_layout_run_in_chunks_equals_the_whole_layout(case):
    # The layout is a value: the driver runs any part of it, and replica i is the same run
    # wherever it is placed (vmapped batches may sum in another order: float32 rounding). Two
    # equal chunks share one compiled program; uneven cuts are `Layout.chunks`' own test above.
    _, data, program = case
    layout = Layout((0, 1, 2, 3))
    host = parse.parse_host("fit_replicas", epochs=3, verbose=0, callbacks=(),
                            epochs_per_chunk=None, on_nan="stop")
    states, history = training.drive(program(layout), layout, host, data)
    parts = [training.drive(program(c), c, host, data) for c in layout.chunks(2)]
    joined = jax.tree.map(lambda *a: jnp.concatenate(a), *(p[0].params for p in parts))
    chex.assert_trees_all_close(joined, states.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.concatenate([p[1].loss for p in parts]), history.loss,
                               rtol=1e-6)
    single, h = js.fit(case[0], data.train.x, data.train.y, epochs=3, batch_size=4, seed=2,
                       metrics=["mae"], verbose=0)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[2], states.params), single.params,
                                rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(history.loss[2], h.loss, rtol=1e-6)
