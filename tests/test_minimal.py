"""jaxseq.MinGRU / MinLSTM (Feng et al. 2024, arXiv:2410.01201) against a float64 NumPy loop.

The reference, tests/reference.py's `minimal`, is written from the paper's step equations
(section 3, and appendix A's g for the log-space form), one time step at a time in float64; it
shares no code with jaxseq.minimal. Both modes ("parallel": associative scan, in log space when
log_space=True; "sequential": lax.scan) must match it, with masks (gaps, a fully masked row,
NaN padding), initial states and go_backwards.

Speed: one jitted program per (layer, time) computes every flag combination, built once
(`_outputs`, cached) and compared case by case.
"""

from __future__ import annotations

import functools
import itertools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from jax.test_util import check_grads

import jaxseq as js

B, F, U = 3, 2, 4
LAYERS = {"min_gru": (js.MinGRU, 2), "min_lstm": (js.MinLSTM, 3)}
MODES = ("parallel", "sequential")
# Flags of one case: (log_space, mode, go_backwards, masked, with_initial_state). Every
# (log_space, mode) with a half fraction of the other three flags, split between the layers
# (which share all of the code these flags touch): at T=7 each pair of their values appears;
# at T=1 and T=100 (where an associative scan costs seconds to compile) one masked set per
# layer, together both directions, with and without an initial state.
_HALF = {"min_gru": ((False, False, False), (True, True, False)),
         "min_lstm": ((False, True, True), (True, False, True))}
_MASKED = {"min_gru": (False, True, True), "min_lstm": (True, True, False)}


def _flags(name: str, time: int) -> list[tuple]:
    others = _HALF[name] if 1 < time < 100 else [_MASKED[name]]
    return [(ls, mode, *rest) for ls, mode in itertools.product((True, False), MODES)
            for rest in others]


def _raises(exc, *fragments):
    """pytest.raises(exc) whose message contains every fragment, literally."""
    return pytest.raises(exc, match="".join(f"(?=[\\s\\S]*{re.escape(f)})" for f in fragments))


def _data(name, time, seed=0):
    rng = np.random.default_rng([seed, time, len(name)])
    gates = LAYERS[name][1]
    params = {"kernel": rng.uniform(-1, 1, (F, gates * U)).astype(np.float32),
              "bias": rng.uniform(-1, 1, (gates * U,)).astype(np.float32)}
    x = rng.normal(size=(B, time, F)).astype(np.float32)
    mask = np.ones((B, time), bool)
    mask[0, time // 3: 2 * time // 3 + 1] = False  # a gap
    mask[1] = False  # a fully masked row: returns its initial state
    mask[2, -1] = False  # the last step (the first one going backwards)
    x[~mask] = np.nan  # padding may hold anything
    h0_positive = rng.uniform(0.1, 2.0, (B, U)).astype(np.float32)
    h0_signed = rng.normal(size=(B, U)).astype(np.float32)
    return params, x, mask, h0_positive, h0_signed


@functools.cache
def _outputs(name: str, time: int) -> dict:
    """Every `_flags` case of layer `name` at `time` steps, from one jitted program."""
    cls = LAYERS[name][0]
    params, x, mask, h0_positive, h0_signed = _data(name, time)
    clean = np.nan_to_num(x)  # unmasked cases see the (zeroed) padding as data

    @jax.jit
    def run(params, x, clean, mask, h0_positive, h0_signed):
        out = {}
        for ls, mode, back, masked, with_h0 in _flags(name, time):
            layer = cls(U, return_sequences=True, return_state=True, mode=mode, log_space=ls,
                        go_backwards=back)
            h0 = (h0_positive if ls else h0_signed) if with_h0 else None
            out[ls, mode, back, masked, with_h0] = layer.apply(
                {"params": params}, x if masked else clean, mask=mask if masked else None,
                initial_state=h0)
        return out

    return jax.device_get(run(params, x, clean, mask, h0_positive, h0_signed))


@pytest.mark.parametrize("time", [1, 7, 100])
@pytest.mark.parametrize("name", LAYERS)
def test_matches_float64_loop(name, time):
    """Both modes, both forms, with and without mask / initial state / go_backwards, equal
    the float64 loop to rtol 1e-5 (atol 1e-6 for the plain form's values near zero)."""
    params, x, mask, h0_positive, h0_signed = _data(name, time)
    outputs = _outputs(name, time)
    for flags in _flags(name, time):
        ls, mode, back, masked, with_h0 = flags
        h0 = (h0_positive if ls else h0_signed) if with_h0 else None
        want_seq, want_h = R.minimal(name, params, x if masked else np.nan_to_num(x),
                                      mask=mask if masked else None, h0=h0, log_space=ls,
                                      go_backwards=back)
        seq, h = outputs[flags]
        chex.assert_shape(seq, (B, time, U))
        chex.assert_type((seq, h), jnp.float32)
        np.testing.assert_allclose(seq, want_seq, rtol=1e-5, atol=1e-6, err_msg=str(flags))
        np.testing.assert_allclose(h, want_h, rtol=1e-5, atol=1e-6, err_msg=str(flags))
        if masked:  # the fully masked row keeps its initial state exactly
            start = h0 if with_h0 else np.full((B, U), 0.5 if ls else 0.0, np.float32)
            np.testing.assert_array_equal(h[1], start[1])


def test_long_sequences():
    """T=1000, MinGRU (the scans are the layers' common part), log space, both modes, to the
    same rtol 1e-5 as short sequences: every step contracts (0 < a_t < 1), so the rounding of
    earlier steps decays instead of piling up over t, and the pairwise log-space scan adds
    only ~log2(T) = 10 roundings per value; measured: 3.4e-7 (parallel) and 2.6e-7
    (sequential) at most, relative. (The paper's cumsum + logcumsumexp form needs ~1e-3 here:
    its offset a* grows like t; see jaxseq.minimal.)"""
    name, time = "min_gru", 1000
    params, x, mask, h0, _ = _data(name, time)
    cls = LAYERS[name][0]

    @jax.jit
    def run(params, x, mask, h0):
        return {mode: cls(U, return_sequences=True, mode=mode).apply(
            {"params": params}, x, mask=mask, initial_state=h0) for mode in MODES}

    got = run(params, x, mask, h0)
    want, _ = R.minimal(name, params, x, mask=mask, h0=h0)
    for mode in MODES:
        np.testing.assert_allclose(got[mode], want, rtol=1e-5, err_msg=mode)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def test_check_grads_float64():
    """Reverse-mode derivatives against finite differences in float64, w.r.t. params, x and
    the initial state, through a masked sequence: each layer, form and mode appears (four
    of the eight combinations, to keep compiling cheap)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        params = {name: {"kernel": rng.uniform(-1, 1, (2, g * 2)),
                         "bias": rng.uniform(-1, 1, (g * 2,))}
                  for name, (_, g) in LAYERS.items()}
        x = rng.normal(size=(2, 4, 2))
        h0 = rng.uniform(0.2, 1.5, (2, 2))
        mask = np.array([[1, 0, 1, 1], [1, 1, 1, 0]], bool)

        cases = (("min_gru", True, "parallel"), ("min_gru", False, "sequential"),
                 ("min_lstm", True, "sequential"), ("min_lstm", False, "parallel"))

        @jax.jit
        def f(params, x, h0):
            out = {}
            for name, ls, mode in cases:
                layer = LAYERS[name][0](2, return_sequences=True, mode=mode, log_space=ls,
                                        dtype=jnp.float64, param_dtype=jnp.float64)
                out[name, ls, mode] = layer.apply({"params": params[name]}, x, mask=mask,
                                                  initial_state=h0)
            return out

        for leaf in jax.tree.leaves(f(params, x, h0)):
            chex.assert_type(leaf, jnp.float64)
        check_grads(f, (params, x, h0), order=1, modes=["rev"])


@pytest.mark.parametrize("name", LAYERS)
def test_masked_gradients_are_finite(name):
    """NaN padding, a gap and a fully masked row: float32 gradients are finite in every form
    and mode but the plain sequential one (no logarithm, no associative scan): the log-space
    parallel one for both layers, one other each; and zero for the padded inputs."""
    params, x, mask, _, _ = _data(name, 5)
    cls = LAYERS[name][0]
    other = (True, "sequential") if name == "min_gru" else (False, "parallel")

    @jax.jit
    def grads(params, x):
        def loss(params, x):
            total = 0.0
            for ls, mode in ((True, "parallel"), other):
                layer = cls(U, return_sequences=True, return_state=True, mode=mode,
                            log_space=ls)
                seq, h = layer.apply({"params": params}, x, mask=mask)
                total = total + jnp.sum(seq ** 2) + jnp.sum(h)
            return total

        return jax.grad(loss, argnums=(0, 1))(params, x)

    gp, gx = grads(params, x)
    chex.assert_tree_all_finite((gp, gx))
    assert np.all(np.asarray(gx)[~mask] == 0)
    assert np.any(np.asarray(gp["kernel"]) != 0)


# --------------------------------------------------------------------------------------------
# Contracts, parameters, shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYERS)
def test_non_positive_initial_state_in_log_space(name):
    cls = LAYERS[name][0]
    x = jnp.ones((B, 3, F))
    variables = {"params": _data(name, 3)[0]}
    bad = np.full((B, U), 0.5, np.float32)
    bad[1, 2] = 0.0
    with _raises(ValueError, cls.__name__, "log_space=True", "initial_state",
                 "(batch, units)", "> 0", "1 entry <= 0", "log_space=False"):
        cls(U).apply(variables, x, initial_state=bad)
    signed = -np.ones((B, U), np.float32)  # the plain form takes signed states
    out = cls(U, log_space=False, return_state=True, mode="sequential").apply(
        variables, x, initial_state=signed)
    chex.assert_tree_all_finite(out)
    # a traced state cannot be checked, and is not refused (tracing is enough to see it)
    jax.jit(lambda h: cls(U).apply(variables, x, initial_state=h)).lower(jnp.full((B, U), 0.5))


def test_bad_config_and_inputs():
    x = jnp.ones((B, 3, F))
    variables = {"params": _data("min_gru", 3)[0]}
    with _raises(ValueError, "MinGRU", "mode", "'parallel'", "'sequential'", "'scan'"):
        js.MinGRU(U, mode="scan").apply(variables, x)
    with _raises(ValueError, "MinGRU", "initial_state", "(batch, units)", f"({B}, {U})"):
        js.MinGRU(U).apply(variables, x, initial_state=jnp.ones((B, U + 1)))
    with _raises(ValueError, "MinLSTM", "(batch, time, features)"):
        js.MinLSTM(U).init(jax.random.key(0), jnp.ones((3, F)))
    with _raises(ValueError, "MinGRU", "built for 2 input features"):
        js.MinGRU(U).apply(variables, jnp.ones((B, 3, F + 1)))


@pytest.mark.parametrize("name", LAYERS)
def test_parameter_layout_and_count(name):
    cls, gates = LAYERS[name]
    features, units = 7, 5
    layer = cls(units)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((1, 9, features)))["params"]
    assert jax.tree.map(jnp.shape, shapes) == {"kernel": (features, gates * units),
                                               "bias": (gates * units,)}
    n = sum(p.size for p in jax.tree.leaves(shapes))
    assert n == features * gates * units + gates * units  # minGRU: f*2u + 2u; minLSTM: 3u
    key = jax.random.key(0)  # the initializers: glorot_uniform kernel, zeros bias
    np.testing.assert_array_equal(layer.bias_init(key, (3,)), 0.0)
    np.testing.assert_array_equal(layer.kernel_init(key, (features, gates * units)),
                                  nn.initializers.glorot_uniform()(key, (features, gates * units)))


@pytest.mark.parametrize("name", LAYERS)
def test_return_state_and_bidirectional(name):
    """return_state shapes; Bidirectional equals its two layers by hand (the backward one
    re-aligned to forward time, zeros at masked steps) and returns forward then backward h."""
    cls = LAYERS[name][0]
    params, x, mask, h0, _ = _data(name, 5)
    x = np.nan_to_num(x)
    out, h = cls(U, return_state=True, mode="sequential").apply({"params": params}, x)
    chex.assert_shape((out, h), (B, U))
    np.testing.assert_array_equal(out, h)

    layer = js.Bidirectional(cls(U, return_sequences=True, return_state=True,
                                 mode="sequential"))
    variables = {"params": {"forward_layer": params, "backward_layer": params}}
    y, h_fw, h_bw = layer.apply(variables, x, mask=mask, initial_state=(h0, h0))
    chex.assert_shape(y, (B, 5, 2 * U))
    chex.assert_shape((h_fw, h_bw), (B, U))
    fw, fw_h = R.minimal(name, params, x, mask=mask, h0=h0)
    bw, bw_h = R.minimal(name, params, x, mask=mask, h0=h0, go_backwards=True)
    want = np.concatenate([fw, np.flip(bw, axis=1)], axis=-1) * mask[:, :, None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_fw, fw_h, rtol=1e-5)
    np.testing.assert_allclose(h_bw, bw_h, rtol=1e-5)

    last = js.Bidirectional(cls(U, mode="sequential"), merge_mode="sum").apply(variables, x,
                                                                                mask=mask)
    chex.assert_shape(last, (B, U))
    # zero_output_for_mask without sequences: zeros where the last processed step is masked
    out = cls(U, zero_output_for_mask=True, mode="sequential").apply(
        {"params": params}, x, mask=mask, initial_state=h0)
    np.testing.assert_allclose(out, fw_h * mask[:, -1:], rtol=1e-5)


# --------------------------------------------------------------------------------------------
# In models: Sequential, fit, rollout, model files
# --------------------------------------------------------------------------------------------


def test_stacked_in_sequential_trains():
    """MinGRU (parallel) -> MinLSTM (sequential) -> Dense learns the mean of a sequence:
    js.fit halves the loss."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (32, 6, 1)).astype(np.float32)
    y = x.mean(axis=1)
    model = js.Sequential((js.MinGRU(8, return_sequences=True),
                           js.MinLSTM(8, mode="sequential"), js.Dense(1)))
    _, history = js.fit(model, x, y, epochs=20, batch_size=8, verbose=0, seed=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def test_rollout_and_model_file(tmp_path):
    """rollout carries the states (equal to re-running the whole sequence each step), and a
    model file holds the layers' settings."""
    model = js.Sequential((js.MinLSTM(4, return_sequences=True, mode="sequential"),
                           js.TimeDistributed(js.Dense(1))))
    prefix = np.linspace(0, 1, 2 * 5, dtype=np.float32).reshape(2, 5, 1)
    variables = model.init(jax.random.key(0), prefix)
    got = js.rollout(model, variables["params"], prefix, steps=3)
    # the layers are causal: run the whole model on a zero-padded sequence, fill in a step
    seq = np.concatenate([prefix, np.zeros((2, 2, 1), np.float32)], axis=1)
    apply = jax.jit(model.apply)
    for t in range(4, 7):
        nxt = np.asarray(apply(variables, seq)[:, t])
        if t < 6:
            seq[:, t + 1] = nxt
    np.testing.assert_allclose(got[:, :2], seq[:, 5:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[:, 2], nxt, rtol=1e-5, atol=1e-6)

    js.save_model(tmp_path / "m.jaxseq", model, variables)
    loaded, loaded_vars = js.load_model(tmp_path / "m.jaxseq")
    assert loaded == model  # the same layers and settings, hence the same function
    chex.assert_trees_all_equal(loaded_vars, jax.tree.map(np.asarray, dict(variables)))


def test_auto_mode_is_the_sequential_loop_on_cpu():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 3)).astype(np.float32))
    auto = js.MinLSTM(4, return_sequences=True)
    assert auto.mode == "auto"
    params = auto.init(jax.random.PRNGKey(0), x)
    seq = js.MinLSTM(4, return_sequences=True, mode="sequential")
    lowered = jax.jit(auto.apply).lower(params, x).as_text()
    assert "while" in lowered  # the loop, not the associative scan's log-depth slices
    np.testing.assert_array_equal(jax.jit(auto.apply)(params, x),
                                  jax.jit(seq.apply)(params, x))
