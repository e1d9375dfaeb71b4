"""jaxseq.LSTM / GRU / SimpleRNN / Bidirectional and the cells against the float64 reference.

The reference (`tests/reference.py`) is an independent NumPy loop over time in float64. jaxseq
runs in float32 and must match it to rtol=1e-5, atol=1e-6 over the product of layer x
return_sequences x return_state x go_backwards x mask x initial_state x unroll x time.

Speed: XLA's CPU compile of one tiny scan costs ~0.3 s, far more than running it, so each
parametrized case does not compile its own program. `_layer_outputs` jit-compiles ONE program per
(layer, time, unroll, input structure) that runs every flag combination, runs it once (cached),
and each test case then compares its own flag combination with the reference.

Everything runs under the suite's strict `jax_numpy_rank_promotion="raise"` (tests/conftest.py).
"""

from __future__ import annotations

import functools
import itertools
import zlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from jax.test_util import check_grads

import jaxseq as js

RTOL, ATOL = 1e-5, 1e-6
B, F, U = 3, 2, 3


# name: (reference kind, jaxseq class, extra layer kwargs, reset_after)
LAYERS = {
    "lstm": ("lstm", js.LSTM, {}, True),
    "gru": ("gru", js.GRU, {}, True),
    "gru_reset_before": ("gru", js.GRU, {"reset_after": False}, False),
    "simple_rnn": ("simple_rnn", js.SimpleRNN, {}, True),
}
CELLS = {
    "lstm": (js.LSTMCell, {}),
    "gru": (js.GRUCell, {}),
    "gru_reset_before": (js.GRUCell, {"reset_after": False}),
    "simple_rnn": (js.SimpleRNNCell, {}),
}


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


def _params(name: str, features: int = F, units: int = U, *, seed=0) -> dict:
    """Random float32 params (as NumPy) in the Keras layout of layer `name`."""
    kind, _, _, reset_after = LAYERS[name]
    rng = np.random.default_rng(_seed("params", name, features, units, seed))
    p = R.random_params(rng, kind, features, units, reset_after=reset_after)
    return {k: v.astype(np.float32) for k, v in p.items()}


def _x(batch: int, time: int, features: int = F, *, seed=0) -> np.ndarray:
    rng = np.random.default_rng(_seed("x", batch, time, features, seed))
    return rng.normal(size=(batch, time, features)).astype(np.float32)


def _states(name: str, batch: int = B, units: int = U, *, seed=0, count=None) -> tuple:
    n = count if count is not None else R.STATE_COUNT[LAYERS[name][0]]
    rng = np.random.default_rng(_seed("h0", name, batch, units, seed))
    return tuple(rng.normal(scale=0.5, size=(batch, units)).astype(np.float32) for _ in range(n))


# Input cases: (mask kind, custom initial_state?)
INPUTS = {
    "plain": (None, False),
    "init": (None, True),  # custom initial_state, no mask
    "pad": ("pad", True),  # right padding
    "holes": ("holes", True),  # masked steps at the start, middle and end
    "full": ("full", True),  # one fully masked row (returns its initial state)
}


def _mask(kind: str | None, time: int) -> np.ndarray | None:
    if kind is None:
        return None
    if time == 1:
        rows = {"pad": [[1], [1], [1]], "holes": [[1], [0], [1]], "full": [[0], [1], [1]]}
        return np.array(rows[kind], bool)
    assert time == 4
    rows = {
        "pad": [[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]],
        "holes": [[1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 0]],
        "full": [[1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]],
    }
    return np.array(rows[kind], bool)


def _inputs(name: str, time: int, case: str):
    mask_kind, custom_init = INPUTS[case]
    params = _params(name)
    x = _x(B, time, seed=name)
    mask = _mask(mask_kind, time)
    init = _states(name, seed=case) if custom_init else None
    return params, x, mask, init


FLAGS = tuple(itertools.product((False, True), repeat=3))  # return_sequences, state, backwards



@functools.cache
def _runner(name: str, unroll, impl: str | None):
    """ONE jitted program running every FLAGS variant of layer `name` (jit then compiles it once
    per input shape and structure: mask / initial_state given or None)."""
    _, cls, kw, _ = LAYERS[name]
    if impl is not None:
        kw = dict(kw, implementation=impl)

    def run(params, x, mask, init):
        out = {}
        for rs, st, gb in FLAGS:
            layer = cls(U, return_sequences=rs, return_state=st, go_backwards=gb, unroll=unroll,
                        **kw)
            out[f"{rs:d}{st:d}{gb:d}"] = layer.apply(
                {"params": params}, x, mask=mask, initial_state=init
            )
        return out

    return jax.jit(run)


@functools.cache
def _layer_outputs(name: str, time: int, unroll, case: str, impl: str | None) -> dict:
    """Every FLAGS variant of layer `name` on one input case (computed once)."""
    return _runner(name, unroll, impl)(*_inputs(name, time, case))


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _check_against_reference(got, want, *, return_state: bool, out_shape, n_states: int):
    got, want = _as_tuple(got), _as_tuple(want)
    assert len(got) == len(want) == (1 + n_states if return_state else 1)
    chex.assert_shape(got[0], out_shape)
    for g in got[1:]:
        chex.assert_shape(g, (out_shape[0], U))
    for g, w in zip(got, want, strict=True):
        chex.assert_type(g, jnp.float32)
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=RTOL, atol=ATOL)


def _product(names, times, unrolls, cases, impls=(None,)):
    out = []
    for name, time, unroll, case, impl, flags in itertools.product(
        names, times, unrolls, cases, impls, FLAGS
    ):
        if time == 1 and unroll == 3:
            continue  # unroll=3 > time=1 is unroll=True
        rs, st, gb = flags
        ids = f"{name}-t{time}-unroll{unroll}-{case}-seq{rs:d}-state{st:d}-back{gb:d}"
        if impl is not None:
            ids += f"-{impl}"
        out.append(pytest.param(name, time, unroll, case, impl, flags, id=ids))
    return out


# Full product for LSTM with the default implementation (unroll is moot at time=1, and only
# the custom-initial-state-without-mask case is left out for unroll 3 / True); GRU /
# SimpleRNN share the RNN code, so they get every flag but fewer unroll / input variants; the
# scan path (what "auto" falls back to) is also forced where "auto" would pick the fused one.
MASKED = ["holes", "full"]
CASES = (
    _product(["lstm"], [4], [False], list(INPUTS))
    + _product(["lstm"], [4], [3, True], ["plain", "pad", *MASKED])
    + _product(["lstm"], [1], [False], list(INPUTS))
    + _product(["gru", "gru_reset_before", "simple_rnn"], [4], [False], ["plain", *MASKED])
    + _product(["gru", "gru_reset_before", "simple_rnn"], [1], [False], MASKED)
)
CASES += _product(["lstm", "gru", "simple_rnn"], [4], [False], MASKED, impls=("scan",))


@pytest.mark.parametrize("name, time, unroll, case, impl, flags", CASES)
def test_layer_matches_float64_reference(name, time, unroll, case, impl, flags):
    rs, st, gb = flags
    got = _layer_outputs(name, time, unroll, case, impl)[f"{rs:d}{st:d}{gb:d}"]
    kind, _, _, reset_after = LAYERS[name]
    params, x, mask, init = _inputs(name, time, case)
    want = R.rnn(
        kind, params, x, mask=mask, initial_state=init, go_backwards=gb,
        return_sequences=rs, return_state=st, reset_after=reset_after,
    )
    _check_against_reference(
        got, want, return_state=st, out_shape=(B, time, U) if rs else (B, U),
        n_states=R.STATE_COUNT[kind],
    )


def test_fully_masked_row_returns_initial_state():
    """Spelled out, not only via the reference: row 1 of the "full" case is fully masked."""
    _, _, mask, init = _inputs("lstm", 4, "full")
    assert not mask[1].any()
    for key in ("110", "111"):  # return_sequences, return_state, go_backwards 0 / 1
        y, h, c = _layer_outputs("lstm", 4, False, "full", None)[key]
        np.testing.assert_array_equal(np.asarray(h)[1], init[0][1])
        np.testing.assert_array_equal(np.asarray(c)[1], init[1][1])
        np.testing.assert_array_equal(np.asarray(y)[1], np.broadcast_to(init[0][1], (4, U)))


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])  # fused and scan under "auto"
def test_zero_output_for_mask(name):
    kind, cls, kw, reset_after = LAYERS[name]
    params, x, mask, init = _inputs(name, 4, "holes")
    variants = list(itertools.product((False, True), repeat=2))  # return_sequences, go_backwards

    def run(params, x, mask, init):
        return [
            cls(U, return_sequences=rs, return_state=True, go_backwards=gb,
                zero_output_for_mask=True, **kw).apply(
                {"params": params}, x, mask=mask, initial_state=init)
            for rs, gb in variants
        ]

    outs = jax.jit(run)(params, x, mask, init)
    for (rs, gb), got in zip(variants, outs, strict=True):
        want = R.rnn(
            kind, params, x, mask=mask, initial_state=init, go_backwards=gb,
            return_sequences=rs, return_state=True, zero_output_for_mask=True,
            reset_after=reset_after,
        )
        _check_against_reference(
            got, want, return_state=True, out_shape=(B, 4, U) if rs else (B, U),
            n_states=R.STATE_COUNT[kind],
        )
    # masked steps are exactly zero; without return_sequences the last processed step decides
    y_seq = np.asarray(outs[2][0])  # return_sequences, forward
    assert np.all(y_seq[~mask] == 0.0) and np.all(np.any(y_seq[mask] != 0.0, axis=-1))
    y_last = np.asarray(outs[0][0])  # forward: row 2's last step is masked
    np.testing.assert_array_equal(y_last[2], np.zeros(U))
    y_last_back = np.asarray(outs[1][0])  # backwards: row 1's first step is masked
    np.testing.assert_array_equal(y_last_back[1], np.zeros(U))
    assert np.all(y_last_back[[0, 2]] != 0.0)


def test_integer_mask_and_single_state_forms_are_accepted():
    params, x, mask, (h0,) = _inputs("gru", 4, "holes")
    layer = js.GRU(U, return_sequences=True)

    @jax.jit
    def run(params, x, mask, h0):
        return [
            layer.apply({"params": params}, x, mask=mask, initial_state=h0),
            layer.apply({"params": params}, x, mask=mask.astype(jnp.int32), initial_state=h0),
            layer.apply({"params": params}, x, mask=mask, initial_state=(h0,)),
            layer.apply({"params": params}, x, mask=mask, initial_state=[h0]),
        ]

    first, *others = run(params, x, mask, h0)
    for other in others:
        np.testing.assert_array_equal(np.asarray(first), np.asarray(other))


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_reset_before"])
def test_layer_without_bias_matches_reference(name):
    kind, cls, kw, reset_after = LAYERS[name]
    params, x, mask, init = _inputs(name, 4, "holes")
    params = {k: v for k, v in params.items() if k != "bias"}
    ref_params = dict(
        params, bias=np.zeros(R.param_shapes(kind, F, U, reset_after=reset_after)["bias"])
    )
    got = cls(U, use_bias=False, return_sequences=True, return_state=True, go_backwards=True,
              **kw).apply({"params": params}, x, mask=mask, initial_state=init)
    want = R.rnn(kind, ref_params, x, mask=mask, initial_state=init, go_backwards=True,
                 return_sequences=True, return_state=True, reset_after=reset_after)
    _check_against_reference(got, want, return_state=True, out_shape=(B, 4, U),
                             n_states=R.STATE_COUNT[kind])


# --------------------------------------------------------------------------------------------
# Parameters: counts, shapes, init
# --------------------------------------------------------------------------------------------


def _param_shapes(module, x_shape=(2, 3, 1)):
    """Parameter shapes from `init` traced abstractly (no compile)."""
    variables = jax.eval_shape(
        module.init, jax.random.key(0), jax.ShapeDtypeStruct(x_shape, jnp.float32)
    )
    return jax.tree.map(lambda s: s.shape, variables["params"])


def _count(shapes) -> int:
    leaves = jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))
    return sum(int(np.prod(s)) for s in leaves)


@pytest.mark.parametrize(
    "module, count, shapes",
    [
        (js.LSTM(5), 140, {"kernel": (1, 20), "recurrent_kernel": (5, 20), "bias": (20,)}),
        (js.GRU(5), 120, {"kernel": (1, 15), "recurrent_kernel": (5, 15), "bias": (2, 15)}),
        (js.GRU(5, reset_after=False), 105,
         {"kernel": (1, 15), "recurrent_kernel": (5, 15), "bias": (15,)}),
        (js.SimpleRNN(5), 35, {"kernel": (1, 5), "recurrent_kernel": (5, 5), "bias": (5,)}),
    ],
    ids=["lstm", "gru", "gru_reset_before", "simple_rnn"],
)
def test_param_counts_and_shapes(module, count, shapes):
    got = _param_shapes(module)
    assert got == shapes
    assert _count(got) == count


def test_bidirectional_param_count_and_shapes():
    got = _param_shapes(js.Bidirectional(js.LSTM(5)))
    lstm = {"kernel": (1, 20), "recurrent_kernel": (5, 20), "bias": (20,)}
    assert got == {"forward_layer": lstm, "backward_layer": lstm}
    assert _count(got) == 280


def test_lstm_init_forget_bias_and_initializers():
    x = jnp.zeros((2, 3, 2))

    @jax.jit
    def init(key):
        return [js.LSTM(4, unit_forget_bias=ufb).init(key, x)["params"] for ufb in (True, False)]

    params, params_no_ufb = init(jax.random.key(1, impl="rbg"))
    bias = np.asarray(params["bias"])
    np.testing.assert_array_equal(bias[4:8], np.ones(4))  # forget gate: [u:2u]
    np.testing.assert_array_equal(np.delete(bias, np.s_[4:8]), np.zeros(12))
    np.testing.assert_array_equal(np.asarray(params_no_ufb["bias"]), np.zeros(16))
    rk = np.asarray(params["recurrent_kernel"])  # orthogonal (u, 4u): orthonormal rows
    np.testing.assert_allclose(rk @ rk.T, np.eye(4), atol=1e-5)
    k = np.asarray(params["kernel"])  # glorot_uniform: |k| <= sqrt(6 / (fan_in + fan_out))
    assert np.all(np.abs(k) <= np.sqrt(6 / (2 + 16))) and np.std(k) > 0
    for p in jax.tree.leaves(params):
        chex.assert_type(p, jnp.float32)


# --------------------------------------------------------------------------------------------
# Cells driven by hand equal the layers
# --------------------------------------------------------------------------------------------



@pytest.mark.parametrize("name", list(CELLS))
def test_cell_params_match_layer_params(name):
    cls, kw = CELLS[name]
    layer_shapes = _param_shapes(LAYERS[name][1](5, **LAYERS[name][2]), (2, 3, 4))
    cell = cls(5, **kw)
    carry = cell.initialize_carry(jax.random.key(0), (2, 4))
    cell_vars = jax.eval_shape(cell.init, jax.random.key(0), carry, jnp.zeros((2, 4)))
    assert jax.tree.map(lambda s: s.shape, cell_vars["params"]) == layer_shapes


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_loop_equals_layer(name):
    cls, kw = CELLS[name]
    params, x, _, init = _inputs(name, 4, "init")
    cell = cls(U, **kw)
    carry = init if len(init) > 1 else init[0]
    hs = []
    for t in range(x.shape[1]):  # the cell driven by hand, one step at a time
        carry, h = cell.apply({"params": params}, carry, x[:, t])
        hs.append(h)
    y, *states = _layer_outputs(name, 4, False, "init", None)["110"]  # the layer
    np.testing.assert_allclose(np.stack(hs, axis=1), np.asarray(y), rtol=RTOL, atol=ATOL)
    carry = carry if isinstance(carry, tuple) else (carry,)
    for a, b in zip(carry, states, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL)


def test_cell_initialize_carry():
    for cls, kw in CELLS.values():
        carry = cls(U, **kw).initialize_carry(jax.random.key(0), (B, F))
        states = carry if isinstance(carry, tuple) else (carry,)
        assert len(states) == (2 if cls is js.LSTMCell else 1)
        for s in states:
            chex.assert_shape(s, (B, U))
            chex.assert_type(s, jnp.float32)
            assert not np.any(np.asarray(s))


def test_cell_in_flax_rnn_equals_layer():
    params, x, _, _ = _inputs("lstm", 4, "plain")
    y_flax = nn.RNN(js.LSTMCell(U)).apply({"params": {"cell": params}}, x)
    y = _layer_outputs("lstm", 4, False, "plain", None)["100"]
    np.testing.assert_allclose(np.asarray(y_flax), np.asarray(y), rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Bidirectional
# --------------------------------------------------------------------------------------------

MERGE_MODES = ["concat", "sum", "mul", "ave", None]
BIDIRECTIONAL_VARIANTS = list(itertools.product(MERGE_MODES, (False, True)))


@functools.cache
def _bidirectional_runner(name: str):
    _, cls, kw, _ = LAYERS[name]

    def run(params, x, mask, init):
        out = {}
        for mode, rs in BIDIRECTIONAL_VARIANTS:
            layer = js.Bidirectional(cls(U, return_sequences=rs, return_state=True, **kw), mode)
            out[f"{mode}-{rs:d}"] = layer.apply({"params": params}, x, mask=mask,
                                                initial_state=init)
        return out

    return jax.jit(run)


@functools.cache
def _bidirectional_outputs(name: str, case: str):
    kind = LAYERS[name][0]
    _, x, mask, _ = _inputs(name, 4, case)
    params = {"forward_layer": _params(name, seed="fw"), "backward_layer": _params(name, seed="bw")}
    init = _states(name, seed=("bi", case), count=2 * R.STATE_COUNT[kind])
    init = init if INPUTS[case][1] else None
    return _bidirectional_runner(name)(params, x, mask, init), params, x, mask, init


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("merge_mode", MERGE_MODES)
@pytest.mark.parametrize("name, case", [("lstm", "holes"), ("lstm", "full"), ("gru", "pad")])
def test_bidirectional_matches_reference(name, case, merge_mode, return_sequences):
    kind, _, _, reset_after = LAYERS[name]
    outs, params, x, mask, init = _bidirectional_outputs(name, case)
    got = outs[f"{merge_mode}-{return_sequences:d}"]
    if merge_mode is None:  # Keras: the flat tuple (y_fw, y_bw, *fw_states, *bw_states)
        assert len(got) == 2 + 2 * R.STATE_COUNT[kind]
        got = ([got[0], got[1]], *got[2:])
    want = R.bidirectional(
        kind, params["forward_layer"], params["backward_layer"], x, merge_mode=merge_mode,
        mask=mask, initial_state=init, return_sequences=return_sequences, return_state=True,
        reset_after=reset_after,
    )
    n = R.STATE_COUNT[kind]
    assert len(got) == len(want) == 1 + 2 * n  # (out, *fw_states, *bw_states)
    out_shape = (B, 4, U) if return_sequences else (B, U)
    if merge_mode is None:
        assert isinstance(got[0], (list, tuple)) and len(got[0]) == 2
        pairs = list(zip(got[0], want[0], strict=True))
        for g in got[0]:
            chex.assert_shape(g, out_shape)
    else:
        width = 2 * U if merge_mode == "concat" else U
        chex.assert_shape(got[0], out_shape[:-1] + (width,))
        pairs = [(got[0], want[0])]
    pairs += list(zip(got[1:], want[1:], strict=True))
    for g, w in pairs:
        chex.assert_type(g, jnp.float32)
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=RTOL, atol=ATOL)
    if return_sequences and merge_mode == "concat":
        assert np.all(np.asarray(got[0])[~mask] == 0.0)  # zeros at masked steps


def test_bidirectional_defaults_without_state():
    params = {"forward_layer": _params("lstm", seed="fw"),
              "backward_layer": _params("lstm", seed="bw")}
    x = _x(B, 4)
    got = js.Bidirectional(js.LSTM(U)).apply({"params": params}, x)
    want = R.bidirectional("lstm", params["forward_layer"], params["backward_layer"], x)
    chex.assert_shape(got, (B, 2 * U))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------


def test_dropout_off_when_deterministic_on_and_reproducible_otherwise():
    params, x, mask, init = _inputs("lstm", 4, "holes")
    kw = dict(return_sequences=True, return_state=True)
    plain = js.LSTM(U, **kw)
    drop = js.LSTM(U, dropout=0.5, recurrent_dropout=0.3, **kw)

    @jax.jit
    def run(key):
        v = {"params": params}
        args = dict(mask=mask, initial_state=init)
        return {
            "plain": plain.apply(v, x, **args),
            "default": drop.apply(v, x, **args),  # deterministic=True is the default
            "deterministic": drop.apply(v, x, **args, deterministic=True, rngs={"dropout": key}),
            "a": drop.apply(v, x, **args, deterministic=False, rngs={"dropout": key}),
            "a2": drop.apply(v, x, **args, deterministic=False, rngs={"dropout": key}),
            "b": drop.apply(v, x, **args, deterministic=False,
                            rngs={"dropout": jax.random.fold_in(key, 1)}),
        }

    out = run(jax.random.key(0, impl="rbg"))
    chex.assert_trees_all_equal(out["default"], out["plain"])
    chex.assert_trees_all_equal(out["deterministic"], out["plain"])
    chex.assert_trees_all_equal(out["a"], out["a2"])  # same key, same bits
    chex.assert_tree_all_finite(out["a"])
    assert not np.allclose(np.asarray(out["a"][0]), np.asarray(out["plain"][0]))
    assert not np.allclose(np.asarray(out["a"][0]), np.asarray(out["b"][0]))


def _identity_rnn_params(n: int, recurrent: bool) -> dict:
    eye = np.eye(n, dtype=np.float32)
    return {"kernel": eye, "recurrent_kernel": eye if recurrent else 0 * eye,
            "bias": np.zeros(n, np.float32)}


def test_dropout_masks_are_drawn_once_per_sequence():
    """Keras draws one dropout mask per sequence and reuses it at every step. A linear
    SimpleRNN with kernel = I, bias = 0 and x = 1 makes the masks visible:

    * input dropout, recurrent_kernel = 0: h_t = dropout(x_t), so the output IS the input mask
      at each step: it must be the same at every step, with both dropped (0) and kept
      (1 / (1 - rate)) units;
    * recurrent dropout, recurrent_kernel = I: h_t = 1 + m * h_{t-1} with m in {0, 2}; one mask
      per sequence gives, per unit, either 1, 1, 1, 1 or 1, 3, 7, 15, and a mask redrawn per
      step would mix the two.
    """
    n, time, rate = 6, 4, 0.5
    ones = jnp.ones((8, time, n))
    kw = dict(activation="linear", return_sequences=True)

    @jax.jit
    def run(key):
        k1, k2 = jax.random.split(key)
        y_in = js.SimpleRNN(n, dropout=rate, **kw).apply(
            {"params": _identity_rnn_params(n, recurrent=False)}, ones, deterministic=False,
            rngs={"dropout": k1})
        y_rec = js.SimpleRNN(n, recurrent_dropout=rate, **kw).apply(
            {"params": _identity_rnn_params(n, recurrent=True)}, ones, deterministic=False,
            rngs={"dropout": k2})
        return y_in, y_rec

    # "rbg" keys: the same semantics as the default threefry ones, much cheaper to compile
    y_in, y_rec = map(np.asarray, run(jax.random.key(3, impl="rbg")))
    np.testing.assert_array_equal(y_in, np.broadcast_to(y_in[:, :1], y_in.shape))
    assert set(np.unique(y_in).tolist()) == {0.0, 1.0 / (1.0 - rate)}
    traj = np.moveaxis(y_rec, 1, -1).reshape(-1, time)  # (b * u, t)
    dropped = np.all(traj == 1.0, axis=1)
    kept = np.all(traj == np.array([1.0, 3.0, 7.0, 15.0]), axis=1)
    assert np.all(dropped | kept) and dropped.any() and kept.any()


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def test_check_grads_float64():
    """Reverse-mode derivatives of orders 1 and 2 of LSTM and GRU against finite differences,
    w.r.t. params and x, through a masked sequence, in float64 (finite differences need the
    precision). Both layers in one function: one set of compiles instead of two."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(_seed("grads"))
        params = {name: R.random_params(rng, name, 2, 2) for name in ("lstm", "gru")}
        x = rng.normal(size=(2, 3, 2))
        mask = np.array([[1, 0, 1], [1, 1, 0]], bool)
        kw = dict(return_sequences=True, return_state=True, dtype=jnp.float64,
                  param_dtype=jnp.float64)
        layers = {"lstm": js.LSTM(2, **kw), "gru": js.GRU(2, **kw)}

        @jax.jit
        def f(params, x):
            return {k: layer.apply({"params": params[k]}, x, mask=mask)
                    for k, layer in layers.items()}

        for leaf in jax.tree.leaves(f(params, x)):
            chex.assert_type(leaf, jnp.float64)
        check_grads(f, (params, x), order=2, modes=["rev"])


def _assert_all_nonzero_finite(grads):
    chex.assert_tree_all_finite(grads)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.any(np.asarray(g) != 0), jax.tree_util.keystr(path)


def test_gradients_flow_through_lstm_and_time_distributed():
    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = js.LSTM(U, return_sequences=True)(x)
            return js.TimeDistributed(nn.Dense(1))(h)

    x = _x(B, 4)
    model = Model()
    shapes = _param_shapes(model, x.shape)
    assert _count(shapes) == 4 * U * (F + U + 1) + U + 1  # one Dense for all steps
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.uniform(-0.5, 0.5, s).astype(np.float32), shapes,
                          is_leaf=lambda s: isinstance(s, tuple))

    @jax.jit
    def grad(params):
        return jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - 1.0) ** 2))(params)

    _assert_all_nonzero_finite(grad(params))


def test_gradients_flow_through_bidirectional():
    x = _x(B, 4)
    _, _, mask, _ = _inputs("lstm", 4, "pad")
    layer = js.Bidirectional(js.GRU(U, return_sequences=True), "sum")
    params = {"forward_layer": _params("gru", seed="fw"),
              "backward_layer": _params("gru", seed="bw")}

    def loss(params, x):
        return jnp.sum(layer.apply({"params": params}, x, mask=mask) ** 2)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    _assert_all_nonzero_finite(g_params)
    g_x = np.asarray(g_x)
    assert np.all(g_x[~mask] == 0) and np.all(np.any(g_x[mask] != 0, axis=-1))


# --------------------------------------------------------------------------------------------
# Transformations: jit, grad, vmap
# --------------------------------------------------------------------------------------------


def test_eager_equals_jit():
    params, x, mask, init = _inputs("lstm", 4, "holes")
    layer = js.LSTM(U, return_sequences=True, return_state=True, go_backwards=True)
    eager = layer.apply({"params": params}, x, mask=mask, initial_state=init)
    jitted = _layer_outputs("lstm", 4, False, "holes", None)["111"]
    chex.assert_trees_all_close(eager, jitted, rtol=RTOL, atol=ATOL)


def test_grad_of_jit_equals_jit_of_grad():
    params, x, mask, _ = _inputs("simple_rnn", 4, "holes")
    layer = js.SimpleRNN(U)

    def loss(p):
        return jnp.sum(layer.apply({"params": p}, x, mask=mask) ** 2)

    a = jax.grad(jax.jit(loss))(params)
    b = jax.jit(jax.grad(loss))(params)
    chex.assert_trees_all_close(a, b, rtol=RTOL, atol=ATOL)
    _assert_all_nonzero_finite(a)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])  # fused and scan under "auto"
def test_vmap_over_leading_axis_equals_loop(name):
    _, cls, kw, _ = LAYERS[name]
    params = _params(name)
    xs = np.stack([_x(B, 4, seed=i) for i in range(3)])  # (n, b, t, f)
    masks = np.stack([_mask(k, 4) for k in ("pad", "holes", "full")])
    layer = cls(U, return_sequences=True, return_state=True, **kw)
    one = jax.jit(lambda x, m: layer.apply({"params": params}, x, mask=m))
    batched = jax.jit(jax.vmap(one))(xs, masks)
    loop = [one(xs[i], masks[i]) for i in range(3)]
    chex.assert_trees_all_close(batched, jax.tree.map(lambda *a: jnp.stack(a), *loop),
                                rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------
# bfloat16
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lstm", "gru_reset_before"])  # fused and scan under "auto"
def test_bfloat16_forward(name):
    _, cls, kw, _ = LAYERS[name]
    params, x, mask, _ = _inputs(name, 4, "holes")

    @jax.jit
    def run(params, x, mask):
        y32 = cls(U, return_sequences=True, **kw).apply({"params": params}, x, mask=mask)
        y16 = cls(U, return_sequences=True, dtype=jnp.bfloat16, **kw).apply(
            {"params": params}, x.astype(jnp.bfloat16), mask=mask
        )
        return y32, y16

    y32, y16 = run(params, x, mask)  # params stay float32
    chex.assert_type(y32, jnp.float32)
    chex.assert_type(y16, jnp.bfloat16)
    chex.assert_shape(y16, (B, 4, U))
    # bfloat16 keeps 8 significant bits (relative spacing 2**-8 ~ 4e-3 near 1); the inputs,
    # params and every intermediate are rounded, and errors compound over 4 steps. Outputs are
    # tanh-bounded (|y| < 1), so 2e-2 absolute is ~5 bf16 ulps: loose enough for rounding,
    # tight enough to catch a wrong formula (which moves outputs by O(0.1)).
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), rtol=0, atol=2e-2)


def test_lstm_projection_states_shapes_and_paths():
    x = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    layer = js.LSTM(5, proj_size=2, return_sequences=True, return_state=True)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    out, h, c = layer.apply({"params": params}, x)
    assert out.shape == (2, 4, 2) and h.shape == (2, 2) and c.shape == (2, 5)
    np.testing.assert_array_equal(out[:, -1], h)
    # an explicit initial state has the projected h width
    again = layer.apply({"params": params}, x[:, 2:], initial_state=(
        layer.apply({"params": params}, x[:, :2])[1:]))[0]
    np.testing.assert_allclose(again, out[:, 2:], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"initial_state h of shape \(batch, units\) = \(2, 2\)"):
        layer.apply({"params": params}, x, initial_state=(np.zeros((2, 5)), np.zeros((2, 5))))
    with pytest.raises(ValueError, match=r"implementation='fused'\) does not support LSTM "
                                         r"proj_size=2"):
        js.LSTM(5, proj_size=2, implementation="fused").init(jax.random.PRNGKey(0), x)
