"""Forward-mode derivatives (`jax.jvp`, `jax.jacfwd`, `jax.linearize`) through the default
recurrent layers, against float64 central differences of independent NumPy references.

The default `LSTM`, `GRU` and `SimpleRNN` run the fused recurrence (`jaxseq.fused`, a custom
JVP), `MinGRU` / `MinLSTM` `sequential_scan` (a custom JVP; "sequential" mode, the default on
CPU) or the associative scan ("parallel"). References: tests/reference.py (the Keras 3 layers,
and `minimal`: the paper's step equations), NumPy float64, one step at a time; derivatives by
central differences in float64 (step 1e-6: truncation about 1e-12, rounding about 1e-10). The
float32 derivatives must agree to float32 rounding: rtol 1e-5 with an absolute floor of 1e-5
times the largest magnitude, as tests/test_fused.py. The custom rules
themselves are also checked in float64 against JAX's autodiff of the same forward math, every
flag, to 1e-10.

Speed: one jitted program per layer computes every case's jvp, linearize, jacfwd and vjp.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R

import jaxseq as js
from jaxseq import fused, linear_scan, products

RTOL = 1e-5
B, T, F, U = 3, 5, 2, 4
# Rows: no padding, holes, fully masked.
MASK = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], bool)
EPS = 1e-6


def _assert_close(got, want, rtol=RTOL):
    """Elementwise rtol, plus an absolute floor of rtol times the array's largest magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(np.max(np.abs(want)), 1))


def _tree_close(got, want, rtol=RTOL):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves) > 0
    for g, w in zip(got_leaves, want_leaves, strict=True):
        _assert_close(g, w, rtol)


def _central(fn, primals, tangents):
    """The directional derivative of fn (NumPy float64, pytrees in and out) at `primals` along
    `tangents`, by central differences."""
    step = lambda s: jax.tree.map(lambda p, t: np.asarray(p, np.float64) + s * EPS * t,
                                  primals, tangents)
    return jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / (2 * EPS),
                        fn(*step(1.0)), fn(*step(-1.0)))


def _jacobian_wrt_x(fn, params, x, init):
    """d fn / d x by central differences, each output leaf (*out, b, t, f)."""
    columns = []
    for index in np.ndindex(x.shape):
        dx = np.zeros_like(x, np.float64)
        dx[index] = 1.0
        zero = (jax.tree.map(np.zeros_like, params), dx, jax.tree.map(np.zeros_like, init))
        columns.append(_central(fn, (params, x, init), zero))
    return jax.tree.map(lambda *cols: np.stack(cols, axis=-1).reshape(*cols[0].shape, *x.shape),
                        *columns)


def _random_like(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: rng.normal(size=np.shape(a)).astype(np.float32), tree)


def _forward_mode(f, primals, tangents, cotangent_seed):
    """(y, jvp, linearize's jvp, jacfwd w.r.t. argument 1, <ct, jvp>, <vjp(ct), tangents>):
    the last two equal when reverse mode is the transpose of forward mode."""
    y, jvp = jax.jvp(f, primals, tangents)
    _, f_lin = jax.linearize(f, *primals)
    jac = jax.jacfwd(f, argnums=1)(*primals)
    leaves, tree = jax.tree.flatten(y)
    keys = jax.random.split(jax.random.key(cotangent_seed), len(leaves))
    ct = jax.tree.unflatten(tree, [jax.random.normal(k, a.shape, a.dtype)
                                   for a, k in zip(leaves, keys, strict=True)])
    vjp = jax.vjp(f, *primals)[1](ct)
    dot = lambda a, b: sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a),
                                                         jax.tree.leaves(b), strict=True))
    return y, jvp, f_lin(*tangents), jac, dot(ct, jvp), dot(vjp, tangents)


# --------------------------------------------------------------------------------------------
# LSTM, GRU, SimpleRNN (default implementation: the fused recurrence)

LAYERS = {"lstm": (js.LSTM, 2), "gru": (js.GRU, 1), "simple_rnn": (js.SimpleRNN, 1)}
# (return_sequences, return_state, go_backwards, masked, initial_state, zero_output_for_mask)
CASES = [
    (False, False, False, False, False, False),
    (True, True, True, True, True, False),
    (True, False, False, True, True, True),
    (False, True, True, True, False, True),
]


def _keyword(flags) -> dict:
    rs, st, gb, _, _, zo = flags
    return dict(return_sequences=rs, return_state=st, go_backwards=gb, zero_output_for_mask=zo)


def _layer_data(kind: str):
    cls, n_states = LAYERS[kind]
    shapes = jax.eval_shape(cls(U).init, jax.random.key(0), jnp.zeros((B, T, F)))["params"]
    rng = np.random.default_rng(len(kind))
    params = jax.tree.map(lambda s: rng.normal(scale=0.5, size=s.shape).astype(np.float32),
                          shapes)
    x = rng.normal(size=(B, T, F)).astype(np.float32)
    init = tuple(rng.normal(scale=0.5, size=(B, U)).astype(np.float32) for _ in range(n_states))
    return params, x, init


@functools.cache
def _layer_derivatives(kind: str) -> dict:
    """{flags: `_forward_mode` results} for every case of CASES, from ONE compiled program."""
    cls, _ = LAYERS[kind]
    params, x, init = _layer_data(kind)
    tangents = _random_like((params, x, init), seed=1)

    def run(params, x, init, tangents):
        out = {}
        for i, flags in enumerate(CASES):
            layer = cls(U, **_keyword(flags))
            masked, use_init = flags[3], flags[4]

            def f(p, x, s, layer=layer, masked=masked, use_init=use_init):
                return layer.apply({"params": p}, x, mask=MASK if masked else None,
                                   initial_state=s if use_init else None)

            # the default runs the fused recurrence (the primal of its custom JVP)
            assert "_fused_recurrence" in str(jax.make_jaxpr(f)(params, x, init))
            out[flags] = _forward_mode(f, (params, x, init), tangents, cotangent_seed=i)
        return out

    return jax.jit(run)(params, x, init, tangents)


def _layer_reference(kind: str, flags):
    masked, use_init = flags[3], flags[4]

    def fn(params, x, init):
        return R.rnn(kind, params, x, mask=MASK if masked else None,
                     initial_state=init if use_init else None, **_keyword(flags))

    return fn


@pytest.mark.parametrize("kind", list(LAYERS))
def test_fused_layers_forward_mode_equals_float64_differences(kind):
    params, x, init = _layer_data(kind)
    tangents = _random_like((params, x, init), seed=1)
    for flags, (y, jvp, lin, jac, ct_jvp, vjp_t) in _layer_derivatives(kind).items():
        ref = _layer_reference(kind, flags)
        _tree_close(y, ref(params, x, init))
        want = _central(ref, (params, x, init), tangents)
        _tree_close(jvp, want)
        _tree_close(lin, want)
        _tree_close(jac, _jacobian_wrt_x(ref, params, x, init))
        _assert_close(ct_jvp, vjp_t)  # reverse mode: the transpose of this forward mode


@pytest.mark.parametrize("kind", list(LAYERS))
def test_recurrence_jvp_equals_autodiff_of_forward_float64(kind, monkeypatch):
    """The custom JVP of the bare recurrence against JAX's JVP of the same forward math (no
    custom rule), float64, w.r.t. every input including the recurrent-dropout mask; both the
    per-gate and the single recurrent product (`split_products`); every flag."""
    n = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    rng = np.random.default_rng(n)
    arr = lambda *shape: rng.normal(scale=0.5, size=shape)
    args = (arr(B, T, F), arr(F, n * U), arr(n * U), arr(U, n * U),
            arr(n * U) if kind == "gru" else None,
            tuple(arr(B, U) for _ in range(2 if kind == "lstm" else 1)),
            rng.uniform(0.5, 1.5, (B, U)))
    specs = [fused.Spec(kind, emit=emit, zero_output_for_mask=zo, reverse=rev)
             for emit, zo, rev in ((True, False, False), (True, True, True), (False, False, True))]
    with jax.enable_x64(True):
        args = jax.tree.map(jnp.asarray, args)
        tangents = jax.tree.map(jnp.asarray, _random_like(args, seed=2))
        tangents = jax.tree.map(lambda t: t.astype(jnp.float64), tangents)
        results = []
        for split in (False, True):
            monkeypatch.setattr(fused, "_small_step", lambda *_, small=split: small)

            def run(args, tangents):
                out = []
                for spec in specs:
                    for mask in (None, jnp.asarray(MASK)):
                        def f(fn, x, kernel, xb, rk, rb, states, rmask, spec=spec, mask=mask):
                            return fn(spec, x, kernel, xb, rk, rb, states, mask, rmask)

                        custom = functools.partial(f, fused.recurrence)
                        plain = functools.partial(
                            f, lambda *a: fused._forward(*a, save=False)[0])
                        out.append((jax.jvp(custom, args, tangents),
                                    jax.jvp(plain, args, tangents)))
                return out

            results += jax.jit(run)(args, tangents)
        for got, want in results:
            _tree_close(got, want, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# MinGRU, MinLSTM

MINIMAL = {"min_gru": (js.MinGRU, 2), "min_lstm": (js.MinLSTM, 3)}
# (mode, log_space, go_backwards, masked, initial_state, return_sequences)
MINIMAL_CASES = [
    ("sequential", True, False, False, False, False),
    ("sequential", False, True, True, True, True),
    ("sequential", True, True, True, True, True),
    ("parallel", True, False, True, True, True),
    ("parallel", False, True, False, False, True),
    ("auto", True, False, True, False, False),
]


def _minimal_reference(name, flags):
    """Feng et al. (2024), section 3 (and appendix A's g in log space), a step at a time in
    float64: (outputs (b, t, u) in processing order, or the last h; the final h)."""
    _, log_space, go_backwards, masked, use_init, return_sequences = flags

    def fn(params, x, h0):
        seq, h = R.minimal(name, params, x, mask=MASK if masked else None,
                           h0=h0 if use_init else None, log_space=log_space,
                           go_backwards=go_backwards)
        return (seq if return_sequences else h), h

    return fn


def _minimal_data(name: str):
    _, gates = MINIMAL[name]
    rng = np.random.default_rng(gates)
    params = {"kernel": rng.uniform(-1, 1, (F, gates * U)).astype(np.float32),
              "bias": rng.uniform(-1, 1, (gates * U,)).astype(np.float32)}
    x = rng.normal(size=(B, T, F)).astype(np.float32)
    h0 = rng.uniform(0.2, 1.5, (B, U)).astype(np.float32)  # positive: valid in log space too
    return params, x, h0


@functools.cache
def _minimal_derivatives(name: str) -> dict:
    cls, _ = MINIMAL[name]
    params, x, h0 = _minimal_data(name)
    tangents = _random_like((params, x, h0), seed=3)

    def run(params, x, h0, tangents):
        out = {}
        for i, flags in enumerate(MINIMAL_CASES):
            mode, log_space, go_backwards, masked, use_init, rs = flags
            layer = cls(U, mode=mode, log_space=log_space, go_backwards=go_backwards,
                        return_sequences=rs, return_state=True)

            def f(p, x, h0, layer=layer, masked=masked, use_init=use_init):
                return layer.apply({"params": p}, x, mask=MASK if masked else None,
                                   initial_state=h0 if use_init else None)

            out[flags] = _forward_mode(f, (params, x, h0), tangents, cotangent_seed=i)
        return out

    return jax.jit(run)(params, x, h0, tangents)


@pytest.mark.parametrize("name", list(MINIMAL))
def test_minimal_layers_forward_mode_equals_float64_differences(name):
    params, x, h0 = _minimal_data(name)
    tangents = _random_like((params, x, h0), seed=3)
    for flags, (y, jvp, lin, jac, ct_jvp, vjp_t) in _minimal_derivatives(name).items():
        ref = _minimal_reference(name, flags)
        _tree_close(y, ref(params, x, h0))
        want = _central(ref, (params, x, h0), tangents)
        _tree_close(jvp, want)
        _tree_close(lin, want)
        _tree_close(jac, _jacobian_wrt_x(ref, params, x, h0))
        _assert_close(ct_jvp, vjp_t)


def test_sequential_scan_derivatives_equal_autodiff_of_the_plain_scan_float64():
    """`sequential_scan`'s custom JVP (and reverse mode, its transpose) against autodiff of
    the same `lax.scan` without it, float64: first order in every argument and with symbolic
    zeros (only b, only a), a Hessian-vector product (forward over reverse) and a gradient of a
    gradient (reverse over reverse)."""
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        a = jnp.asarray(rng.uniform(0.1, 0.9, (T, B, U)))
        b, h0 = jnp.asarray(rng.normal(size=(T, B, U))), jnp.asarray(rng.normal(size=(B, U)))
        da, db, dh0 = (jnp.asarray(rng.normal(size=v.shape)) for v in (a, b, h0))

        def run(scan):
            cube = lambda a, b, h0: jnp.sum(scan(a, b, h0) ** 3)
            return (jax.jvp(scan, (a, b, h0), (da, db, dh0)),
                    jax.vjp(scan, a, b, h0)[1](jnp.sin(scan(a, b, h0))),
                    jax.jvp(lambda b: scan(a, b, h0), (b,), (db,))[1],
                    jax.jvp(lambda a: scan(a, b, h0), (a,), (da,))[1],
                    jax.jvp(jax.grad(cube), (a, b, h0), (da, db, dh0))[1],
                    jax.grad(lambda a: jnp.sum(jax.grad(cube)(a, b, h0) ** 2))(a))

        _tree_close(jax.jit(lambda: run(linear_scan.sequential_scan))(),
                    jax.jit(lambda: run(linear_scan._scan_linear))(), rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Replica counts for the derivatives' products


def test_replicas_counts_the_bound_replica_axes_and_the_drivers_use_them():
    from jaxseq.training import spec

    assert (spec.REPLICA_AXIS, *spec.SPLIT_AXES) == products.REPLICA_AXES
    seen = []

    def probe(v):
        seen.append(products.replicas())
        return v

    probe(jnp.ones(2))
    jax.vmap(probe, axis_name="replica")(jnp.ones((7, 2)))
    jax.vmap(jax.vmap(probe, axis_name="seed"), axis_name="split")(jnp.ones((5, 3, 2)))
    jax.vmap(probe, axis_name="other")(jnp.ones((4, 2)))  # not a replica axis: one replica
    assert seen == [1, 7, 15, 1]
    # the size rule counts every replica: 15 x (8, 5) @ (5, 20) = 12000 multiply-adds stay a
    # multiply and sum, 30 x = 24000 take the dot (`products.SMALL_STACKED`), as fused_matmul
    a, w = jnp.ones((8, 5)), jnp.ones((5, 20))
    dots = lambda r: str(jax.make_jaxpr(
        functools.partial(products.matmul, replicas=r))(a, w)).count("dot_general")
    assert (dots(1), dots(15), dots(30)) == (0, 0, 1)


# --------------------------------------------------------------------------------------------
# Every registered recurrent layer kind at its defaults, and the flags that change its path

# registered name -> (the layer, built with extra keyword arguments, its input shape)
KINDS = {
    "LSTM": (lambda **kw: js.LSTM(3, **kw), (2, 4, 2)),
    "GRU": (lambda **kw: js.GRU(3, **kw), (2, 4, 2)),
    "SimpleRNN": (lambda **kw: js.SimpleRNN(3, **kw), (2, 4, 2)),
    "MinGRU": (lambda **kw: js.MinGRU(3, **kw), (2, 4, 2)),
    "MinLSTM": (lambda **kw: js.MinLSTM(3, **kw), (2, 4, 2)),
    "ConvLSTM1D": (lambda **kw: js.ConvLSTM1D(2, 2, **kw), (2, 3, 4, 2)),
    "ConvLSTM2D": (lambda **kw: js.ConvLSTM2D(2, (2, 2), **kw), (2, 3, 3, 3, 1)),
    "Bidirectional": (lambda **kw: js.Bidirectional(js.LSTM(3, **kw)), (2, 4, 2)),
}
# the defaults of every kind, then the flags that take another path: layer_norm (the scan
# path under "auto") and remat (checkpointed segments around the fused / sequential loop)
KIND_CASES = [(name, {}) for name in KINDS] + [
    ("LSTM", {"layer_norm": True}), ("GRU", {"layer_norm": True}),
    ("LSTM", {"remat": 2}), ("GRU", {"remat": 2}), ("SimpleRNN", {"remat": 2}),
    ("MinGRU", {"remat": 2}), ("MinLSTM", {"remat": 2}), ("ConvLSTM1D", {"remat": 2}),
]


def test_kind_cases_cover_every_registered_recurrent_layer():
    # jaxseq's own kinds: the registry is process-wide, and other test modules (and docs
    # pages) register kinds of their own in the same process
    recurrent = {k.name for k in js.registry.kinds()
                 if (issubclass(k.cls, js.RNN) or k.cls is js.Bidirectional)
                 and k.cls.__module__.split(".")[0] == "jaxseq"}
    assert recurrent == set(KINDS)


@pytest.mark.parametrize(("name", "extra"), KIND_CASES,
                         ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in e.items()) or 'default'}"
                              for n, e in KIND_CASES])
def test_every_recurrent_kind_differentiates_in_forward_mode(name, extra):
    """jax.jvp and jax.jacfwd through the layer as a user builds it (float32 and float64),
    against float64 central differences of the same layer's forward: the jvp along a random
    direction of (params, x), and jacfwd w.r.t. x contracted with a direction of x."""
    make, shape = KINDS[name]
    layer = make(**extra)
    rng = np.random.default_rng(len(name))
    x = rng.normal(size=shape).astype(np.float32)
    params = layer.init(jax.random.key(0), jnp.asarray(x))["params"]
    params = jax.tree.map(lambda p: p + rng.normal(scale=0.3, size=p.shape).astype(p.dtype),
                          params)
    dp, dx = _random_like((params, x), seed=5)

    f = lambda p, x: layer.apply({"params": p}, x)

    def derivatives(params, x, dp, dx):
        jac = jax.jacfwd(f, argnums=1)(params, x)
        return jax.jvp(f, (params, x), (dp, dx))[1], jnp.tensordot(jac, dx, axes=x.ndim)

    def differences(params, x, dp, dx):
        central = lambda tp, tx: jax.tree.map(
            lambda a, b: (a - b) / (2 * EPS),
            f(jax.tree.map(lambda p, t: p + EPS * t, params, tp), x + EPS * tx),
            f(jax.tree.map(lambda p, t: p - EPS * t, params, tp), x - EPS * tx))
        return central(dp, dx), central(jax.tree.map(jnp.zeros_like, dp), dx)

    jvp32, jac_dx32 = jax.jit(derivatives)(params, x, dp, dx)
    with jax.enable_x64(True):
        f64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x, dp, dx))
        (jvp64, jac_dx64), (want, want_x) = jax.jit(
            lambda *a: (derivatives(*a), differences(*a)))(*f64)
    # float64 forward mode equals the differences to their error (about 1e-10, see the top)
    _tree_close(jvp64, want, rtol=1e-7)
    _tree_close(jac_dx64, want_x, rtol=1e-7)
    # float32 forward mode (the layer as used) equals them to float32 rounding
    _tree_close(jvp32, want)
    _tree_close(jac_dx32, want_x)
