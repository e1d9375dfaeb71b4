"""`remat=` on LSTM, GRU and SimpleRNN (jaxseq.remat): checkpointed segments of time.

The reference is the same layer without `remat` (whose own outputs and gradients are checked
against NumPy, Keras and PyTorch in the other test files). With `remat`, the compiled forward
must give the same outputs bit for bit (every segment computes the same steps), and the
gradients w.r.t. params, inputs and initial states must agree in float64 to 1e-10 (the
per-segment weight gradients are summed in another order). Inside a gradient program the
outputs agree to rounding, not bitwise: there the fused path's forward without remat is its
training variant (input projection inside the step, `fused.project_in_loop`), while the
checkpointed segments compute their outputs with the inference variant. The memory claim is
checked on the compiled gradient program's temporary buffers (`memory_analysis`, deterministic
for a given program), not on timings.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests_common import jit_apply, jit_init

import jaxseq as js
from jaxseq import remat

B, T, F, U = 3, 11, 2, 4  # T = 11 is prime: no segment length k > 1 divides it
LAYERS = {"lstm": (js.LSTM, 2), "gru": (js.GRU, 1), "simple_rnn": (js.SimpleRNN, 1)}
# Rows: no padding, holes (one across a segment boundary), a fully masked row.
MASK = np.ones((B, T), bool)
MASK[1, [2, 3, 4, 9]] = False
MASK[2] = False
REMATS = (True, 3)  # k = ceil(sqrt(11)) = 4 (11 = 2*4 + 3) and 3 (11 = 3*3 + 2)


def _data(n_states: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, T, F)), dtype)
    init = tuple(jnp.asarray(rng.normal(scale=0.5, size=(B, U)), dtype) for _ in range(n_states))
    return x, init


def _loss(layer, params, x, init, **kw):
    """A weighted sum of every output and state (fixed weights, so that every element carries
    its own gradient), and the outputs themselves."""
    out = layer.apply(params, x, initial_state=init, **kw)
    weights = [jnp.cos(jnp.arange(o.size, dtype=o.dtype)).reshape(o.shape) for o in out]
    return sum(jnp.sum(w * o) for w, o in zip(weights, out, strict=True)), out


def _grads(layer, params, x, init, **kw):
    return jax.grad(lambda p, x, s: _loss(layer, p, x, s, **kw), argnums=(0, 1, 2),
                    has_aux=True)(params, x, init)


def _assert_close(got, want, *, rtol: float, atol: float):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", ["fused", "scan"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_forward_identical(kind, impl):
    """The compiled forward with remat in REMATS x go_backwards x masked or not x
    return_sequences, with return_state and an initial state, equals the default bit for bit."""
    cls, n_states = LAYERS[kind]
    x, init = _data(n_states, jnp.float32)
    combos = list(itertools.product((False, True), (False, True), (False, True)))

    def layer(go_backwards, seqs, r=False):
        return cls(U, implementation=impl, return_sequences=seqs, return_state=True,
                   go_backwards=go_backwards, remat=r)

    params = jit_init(layer(False, False), jax.random.key(1), x)

    def run(params, x, init):
        out = {}
        for gb, masked, seqs in combos:
            mask = MASK if masked else None
            for r in (False, *REMATS):
                out[gb, masked, seqs, r] = layer(gb, seqs, r).apply(params, x, mask=mask,
                                                                   initial_state=init)
        return out

    out = jax.jit(run)(params, x, init)
    for (gb, masked, seqs, _), got in out.items():
        want = out[gb, masked, seqs, False]
        assert len(got) == 1 + n_states
        assert got[0].shape == ((B, T, U) if seqs else (B, U))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("impl", ["fused", "scan"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_gradients_equal_the_default_float64(kind, impl):
    """Every remat in REMATS x go_backwards x masked or not, return_sequences and return_state,
    an initial state: gradients w.r.t. params, x and the initial state (and the outputs) to
    1e-10 in float64. One compiled program per layer and implementation."""
    cls, n_states = LAYERS[kind]
    with jax.enable_x64(True):
        x, init = _data(n_states, jnp.float64)
        flags = list(itertools.product((False, True), (False, True)))  # go_backwards, masked

        def layer(go_backwards, r=False):
            return cls(U, implementation=impl, return_sequences=True, return_state=True,
                       go_backwards=go_backwards, remat=r, param_dtype=jnp.float64)

        params = jit_init(layer(False), jax.random.key(1), x)

        def run(params, x, init):
            out = {}
            for gb, masked in flags:
                mask = MASK if masked else None
                out[gb, masked, False] = _grads(layer(gb), params, x, init, mask=mask)
                for r in REMATS:
                    out[gb, masked, r] = _grads(layer(gb, r), params, x, init, mask=mask)
            return out

        out = jax.jit(run)(params, x, init)
        for (gb, masked, r), got in out.items():
            if r is not False:
                _assert_close(got, out[gb, masked, False], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["fused", "scan"])
def test_float32_gradients_and_dropout_masks(impl):
    """float32, with input and recurrent dropout drawn from the same key: the same dropout masks
    with and without remat, so the same outputs and gradients, to rtol 1e-5 (atol 1e-6 for
    entries near zero); last outputs only (return_sequences=False)."""
    x, init = _data(2, jnp.float32, seed=3)
    rngs = {"dropout": jax.random.key(7)}

    def layer(r):
        return js.LSTM(U, implementation=impl, return_state=True, dropout=0.3,
                       recurrent_dropout=0.4, remat=r)

    params = jit_init(layer(False), jax.random.key(1), x)

    def run(params, x, init):
        kw = dict(mask=MASK, deterministic=False, rngs=rngs)
        return {r: _grads(layer(r), params, x, init, **kw) for r in (False, True, 3)}

    out = jax.jit(run)(params, x, init)
    for r in (True, 3):
        _assert_close(out[r], out[False], rtol=1e-5, atol=1e-6)
    no_dropout = jit_apply(layer(False), params, x, initial_state=init, mask=MASK)
    assert not np.allclose(out[False][1][0], no_dropout[0])  # dropout was on


def test_bidirectional_with_remat():
    """Bidirectional passes remat to both directions (clones): same outputs and gradients."""
    with jax.enable_x64(True):
        x, _ = _data(0, jnp.float64)

        def model(r):
            return js.Bidirectional(js.GRU(U, return_sequences=True, remat=r,
                                           param_dtype=jnp.float64))

        params = jit_init(model(False), jax.random.key(2), x)

        def grads(r):
            def loss(p, x):
                y = model(r).apply(p, x, mask=MASK)
                return jnp.sum(jnp.sin(y)), y
            return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)

        run = jax.jit(lambda: {r: grads(r) for r in (False, 3)})
        out = run()
        (g3, y3), (g0, y0) = out[3], out[False]
        assert y3.shape == (B, T, 2 * U)
        _assert_close((g3, y3), (g0, y0), rtol=1e-10, atol=1e-12)


def _temp_bytes(layer, batch: int, time: int, features: int) -> int:
    x = jnp.zeros((batch, time, features), jnp.float32)
    params = jax.eval_shape(layer.init, jax.random.key(0), x)

    def loss(params, x):
        return jnp.mean(layer.apply(params, x))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("impl", ["fused", "scan"])
def test_remat_bounds_gradient_memory(impl):
    """T=1000, LSTM(32), batch 8, float32: the gradient program's temporaries with remat=True
    (segments of 32 steps) are at most 1/4 of those without (measured: about 1/12 fused,
    1/18 scan)."""
    def layer(r):
        return js.LSTM(32, implementation=impl, return_sequences=True, remat=r)

    default = _temp_bytes(layer(False), 8, 1000, 8)
    checkpointed = _temp_bytes(layer(True), 8, 1000, 8)
    assert checkpointed * 4 <= default, (checkpointed, default)


def test_segment_length():
    assert remat.segment_length(True, 11) == 4
    assert remat.segment_length(True, 16) == 4
    assert remat.segment_length(True, 17) == 5
    assert remat.segment_length(3, 11) == 3
    assert remat.segment_length(np.int64(5), 11) == 5
    assert remat.segment_length(False, 11) is None
    assert remat.segment_length(11, 11) is None  # one segment: nothing to checkpoint
    assert remat.segment_length(True, 1) is None


@pytest.mark.parametrize("bad", [0, -2, 2.5, 3.0, "yes", None, (2,)])
@pytest.mark.parametrize("cls", [js.LSTM, js.GRU, js.SimpleRNN])
def test_bad_remat_raises(cls, bad):
    with pytest.raises(ValueError, match=r"remat.*positive int.*got"):
        cls(U, remat=bad).init(jax.random.key(0), jnp.zeros((B, T, F)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_remat_with_layer_norm_gives_the_default_gradients(kind):
    """Layer norm runs on the scan path; its input norm is part of each segment's projection."""
    cls, n = LAYERS[kind]
    with jax.enable_x64(True):
        x, init = _data(n, jnp.float64)
        make = lambda **kw: cls(U, return_sequences=True, return_state=True, layer_norm=True,
                                param_dtype=jnp.float64, **kw)
        params = jit_init(make(), jax.random.PRNGKey(0), x, initial_state=init)
        want, got = jax.jit(lambda p, x, s: (_grads(make(), p, x, s, mask=MASK),
                                             _grads(make(remat=3), p, x, s, mask=MASK)))(
            params, x, init)
        _assert_close(got, want, rtol=1e-10, atol=1e-12)
