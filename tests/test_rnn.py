"""The sequence-layer base `js.RNN` (jaxseq.rnn): what it gives every recurrent layer.

`MinGRU`, `MinLSTM` and `ConvLSTM1D` take `stateful` and `remat` from the base; the references
are the same layers without them (their outputs are checked against NumPy and Keras in
test_minimal.py and test_conv_lstm.py): windows carried by `stateful` equal one pass, and
checkpointed segments give the unsegmented outputs and, in float64, its gradients to 1e-10.
One implementation name, resolved in one function, for every layer.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests_common import jit_apply, jit_init

import jaxseq as js
from jaxseq.rnn import resolve_implementation, unroll_steps

B, T, F, U = 2, 7, 2, 3
MASK = np.ones((B, T), bool)
MASK[1, :3] = False  # a leading hole longer than a segment of 2
MASK[1, 5] = False
# name -> (layer factory taking keyword flags, the input shape)
KINDS = {
    "min_gru": (lambda **kw: js.MinGRU(U, log_space=False, **kw), (B, T, F)),
    "min_lstm": (lambda **kw: js.MinLSTM(U, log_space=False, **kw), (B, T, F)),
    "conv_lstm1d": (lambda **kw: js.ConvLSTM1D(U, 3, padding="same", **kw), (B, T, 4, F)),
}
LOG_SPACE = {"min_gru_log": (lambda **kw: js.MinGRU(U, **kw), (B, T, F))}  # positive states


def _x(shape, dtype=np.float32):
    return np.random.default_rng(1).normal(size=shape).astype(dtype)


def test_implementation_is_resolved_in_one_place():
    assert [resolve_implementation(js.LSTM(3), p) for p in ("cpu", "default")] == ["fused"] * 2
    assert resolve_implementation(js.GRU(3, reset_after=False), "cpu") == "scan"
    assert [resolve_implementation(js.MinGRU(3), p) for p in ("cpu", "default")] == [
        "sequential", "parallel"]
    assert resolve_implementation(js.MinGRU(3, implementation="parallel"), "cpu") == "parallel"
    assert resolve_implementation(js.MinLSTM(3, mode="parallel"), "cpu") == "parallel"
    assert resolve_implementation(js.ConvLSTM2D(2, 3), "default") == "scan"
    with pytest.raises(ValueError, match=r"ConvLSTM1D expects implementation to be one of "
                                         r"'auto', 'scan'; got 'fused'"):
        resolve_implementation(js.ConvLSTM1D(2, 3, implementation="fused"), "cpu")
    with pytest.raises(ValueError, match=r"MinGRU got implementation='parallel' and "
                                         r"mode='sequential'; mode is another name"):
        resolve_implementation(js.MinGRU(3, implementation="parallel", mode="sequential"), "cpu")
    with pytest.raises(ValueError, match=r"SimpleRNN\(implementation='fused'\) does not "
                                         r"support activation='elu'.*use implementation='scan'"):
        resolve_implementation(js.SimpleRNN(3, activation="elu", implementation="fused"), "cpu")


def test_mode_and_implementation_name_the_same_choice():
    x = _x((B, T, F))
    layer = js.MinLSTM(U, return_sequences=True)
    variables = jit_init(layer, jax.random.key(0), x)
    by_name = jit_apply(layer.clone(implementation="parallel"), variables, x, mask=MASK)
    np.testing.assert_array_equal(jit_apply(layer.clone(mode="parallel"), variables, x, mask=MASK),
                                  by_name)


def test_unroll_rule():
    assert [unroll_steps(u, 5) for u in (False, True, 1, 3, 9, 0)] == [1, 5, 1, 3, 5, 1]


@pytest.mark.parametrize("kind", list(KINDS))
def test_stateful_windows_equal_one_pass(kind):
    make, shape = KINDS[kind]
    x = _x(shape)
    stateful = make(return_sequences=True, stateful=True)
    variables = stateful.init(jax.random.key(0), x[:, :2])
    assert set(variables) == {"params", "rnn_state"}
    whole = jit_apply(make(return_sequences=True), {"params": variables["params"]}, x)
    step = jax.jit(lambda v, x: stateful.apply(v, x, mutable=["rnn_state"]))
    v, outs = variables, []
    for a, b in ((0, 2), (2, 3), (3, T)):
        y, upd = step(v, x[:, a:b])
        v = {**v, **upd}
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), whole, rtol=1e-5, atol=1e-6)
    assert all(not np.any(s) for s in jax.tree.leaves(js.reset_states(v)["rnn_state"]))
    with pytest.raises(ValueError, match=r"stateful=True\) keeps one state per sample for "
                                         r"batches of 2"):
        stateful.apply(v, np.concatenate([x, x])[:, :2], mutable=["rnn_state"])


def test_stateful_log_space_minimal_layers_are_refused():
    with pytest.raises(ValueError, match=r"MinGRU\(stateful=True\) expects log_space=False"):
        js.MinGRU(U, stateful=True).init(jax.random.key(0), _x((B, T, F)))


def test_conv_lstm_states_are_spelled_in_its_axes():
    layer = js.ConvLSTM2D(2, 3, padding="same")
    x = _x((B, 3, 4, 5, 1))
    variables = jit_init(layer, jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"initial_state with 2 array\(s\) \(h, c\), each of "
                                         r"shape \(batch, rows', cols', filters\); got 1"):
        layer.apply(variables, x, initial_state=np.zeros((B, 4, 5, 2), np.float32))


@pytest.mark.parametrize("kind", [*KINDS, *LOG_SPACE])
def test_remat_equals_unsegmented_float64(kind):
    """remat=2 (segments 2, 2, 2, 1) x go_backwards x masked or not: outputs and gradients
    w.r.t. params, x and the initial states equal the unsegmented layer's to 1e-10 in float64
    (the associative scan and the per-segment weight gradients sum in another order). The
    minimal layers run both implementations."""
    make, shape = {**KINDS, **LOG_SPACE}[kind]
    impls = ("parallel", "sequential") if kind.startswith("min") else ("scan",)
    with jax.enable_x64(True):
        x = jnp.asarray(_x(shape, np.float64))
        base = make(return_sequences=True, return_state=True, param_dtype=jnp.float64)
        params = base.init(jax.random.key(1), x)
        n_states = len(base.state_names)
        state = np.abs(_x(base.state_shapes(shape)[0], np.float64)) + 0.1  # log space: > 0
        init = tuple(jnp.asarray(state) for _ in range(n_states))

        def grads(layer, mask, params, x, init):
            def loss(p, x, s):
                out = layer.apply(p, x, mask=mask, initial_state=s)
                return sum(jnp.sum(jnp.cos(jnp.arange(o.size)).reshape(o.shape) * o)
                           for o in out), out
            return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, init)

        def run(params, x, init):
            out = {}
            for impl, gb, masked, r in itertools.product(impls, (False, True), (False, True),
                                                         (False, 2)):
                layer = base.clone(implementation=impl, go_backwards=gb, remat=r)
                out[impl, gb, masked, r] = grads(layer, MASK if masked else None, params, x,
                                                 init)
            return out

        out = jax.jit(run)(params, x, init)
        for (impl, gb, masked, _), got in out.items():
            want = out[impl, gb, masked, False]
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
