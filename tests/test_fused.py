"""The fused recurrence (`jaxseq.fused`, `implementation="fused"`) against the reference path.

The reference is autodiff of the plain scan: the layer with `implementation="scan"` (flax
`nn.scan`), and, for the bare `fused.recurrence`, autodiff of the same forward math without the
custom backward. Outputs and gradients (w.r.t. params, inputs and initial states) must agree to
rtol=1e-5 in float32 over masks, go_backwards, return_sequences, return_state, initial_state,
zero_output_for_mask and dropout; `check_grads` must pass in float64.

Speed: XLA's CPU compile dominates, so each test jit-compiles ONE program that runs several flag
combinations of both implementations.
"""

from __future__ import annotations

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as R
from jax.test_util import check_grads

import jaxseq as js
from jaxseq import fused

RTOL, ATOL = 1e-5, 1e-6
B, T, F, U = 3, 5, 2, 4
LAYERS = {"lstm": (js.LSTM, 2), "gru": (js.GRU, 1), "simple_rnn": (js.SimpleRNN, 1)}
# Rows: no padding, holes, fully masked.
MASK = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], bool)


def _data(name: str, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, F)).astype(dtype)
    n_states = LAYERS[name][1]
    init = tuple(rng.normal(scale=0.5, size=(B, U)).astype(dtype) for _ in range(n_states))
    return x, init


@functools.cache
def _params(name: str, dtype=jnp.float32, seed=1):
    """Random params in the layer's layout (shapes from `eval_shape`: no initializer to
    compile), biases included so that every bias path carries gradient."""
    layer = LAYERS[name][0](U, param_dtype=dtype)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((B, T, F), dtype))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(scale=0.5, size=s.shape), dtype), shapes)


def _run(fn, *args):
    """jit-compile fn for args and run it (one program per call)."""
    return jax.jit(fn)(*args)


def _weighted_sum(out, seed: int):
    """A scalar that depends on every output with its own random weight."""
    leaves = jax.tree.leaves(out)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    weights = [jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys, strict=True)]
    return sum(jnp.sum(a * w) for a, w in zip(leaves, weights, strict=True))


# (return_sequences, return_state, go_backwards, masked, initial_state, zero_output_for_mask):
# every flag both ways and every pair of flags in all four combinations (a covering array; see
# test_covering_flags_exercise_every_pair), six programs instead of 64.
COVER = [
    (False, False, False, False, False, False),
    (True, True, True, True, True, True),
    (False, False, False, True, True, True),
    (False, True, True, False, False, True),
    (True, False, True, False, True, False),
    (True, True, False, True, False, False),
]


def _key(flags) -> str:
    return "".join(str(int(f)) for f in flags)


# Per kind: the flag combinations run deterministic, and those run with dropout and
# recurrent_dropout (LSTM: the covering array; GRU and SimpleRNN share the flag handling, so the
# two extremes). The all-True row runs with dropout only.
PLAN = {"lstm": (COVER[:1] + COVER[2:], COVER[1:2]), "gru": (COVER[:1], COVER[1:2]),
        "simple_rnn": (COVER[:1], COVER[1:2])}


@functools.cache
def _grads(name: str) -> dict:
    """{(flags, dropout, impl): (outputs, grads)} from ONE compiled program per kind."""
    cls, _ = LAYERS[name]
    params = _params(name)
    x, init = _data(name)
    combos, with_dropout = PLAN[name]

    def run(params, x, init, mask):
        out = {}
        for flags, dropout in [(f, False) for f in combos] + [(f, True) for f in with_dropout]:
            rs, st, gb, masked, use_init, zo = flags
            kw = {"dropout": 0.3, "recurrent_dropout": 0.4} if dropout else {}
            for impl in ("scan", "fused"):
                # unroll > 1 (not dividing T) on some fused runs: same math, other loop shape
                unroll = 2 if impl == "fused" and gb else False
                layer = cls(U, return_sequences=rs, return_state=st, go_backwards=gb,
                            zero_output_for_mask=zo, implementation=impl, unroll=unroll, **kw)

                def loss(params, x, init, layer=layer, masked=masked, use_init=use_init,
                         dropout=dropout):
                    y = layer.apply(
                        {"params": params}, x, mask=mask if masked else None,
                        initial_state=init if use_init else None,
                        deterministic=not dropout, rngs={"dropout": jax.random.key(7)},
                    )
                    return _weighted_sum(y, 3), y

                (_, y), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
                    params, x, init
                )
                # The forward alone (no gradient) runs the custom_jvp's primal: check it too.
                primal = loss(params, x, init)[1] if impl == "fused" else y
                out[_key(flags), dropout, impl] = (y, g, primal)
        return out

    return _run(run, params, x, init, MASK)


def _assert_close(got, want, rtol=RTOL, atol=ATOL):
    """Elementwise rtol, plus an absolute floor of rtol times the array's largest magnitude:
    float32 sums in a different order (one product over all steps vs. one per step) differ by
    rounding relative to the sum's terms, not to a result that happens to cancel."""
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        chex.assert_equal_shape([g, w])
        assert g.dtype == w.dtype
        g, w = np.asarray(g), np.asarray(w)
        floor = rtol * float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=max(atol, floor))


CASES = [
    pytest.param(name, flags, dropout, id=f"{name}-{_key(flags)}{'-dropout' if dropout else ''}")
    for name, (combos, with_dropout) in PLAN.items()
    for flags, dropout in [(f, False) for f in combos] + [(f, True) for f in with_dropout]
]


@pytest.mark.parametrize("name, flags, dropout", CASES)
def test_fused_matches_scan_outputs_and_gradients(name, flags, dropout):
    """Outputs, and gradients w.r.t. params, x and initial_state. With dropout both paths get
    the same masks (drawn before the paths split)."""
    out = _grads(name)
    y_fused, g_fused, primal_fused = out[_key(flags), dropout, "fused"]
    y_scan, g_scan, primal_scan = out[_key(flags), dropout, "scan"]
    _assert_close(y_fused, y_scan)
    _assert_close(primal_fused, primal_scan)
    _assert_close(g_fused, g_scan)


def test_covering_flags_exercise_every_pair():
    cols = np.array(COVER, int)
    for i, j in itertools.combinations(range(cols.shape[1]), 2):
        assert {tuple(p) for p in cols[:, [i, j]]} == {(0, 0), (0, 1), (1, 0), (1, 1)}


# --------------------------------------------------------------------------------------------
# The bare custom_jvp against autodiff of the same forward (gradients w.r.t. every input,
# the recurrent-dropout mask included), float32 and float64.


def _recurrence_case(kind: str, dtype, *, masked: bool, rmasked: bool, seed=0):
    """Arguments of `fused.recurrence` after the spec: (x, kernel, input_bias, recurrent_kernel,
    recurrent_bias, states, rmask), and the mask."""
    n = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    rng = np.random.default_rng(seed)
    arr = lambda *shape, scale=1.0: jnp.asarray(rng.normal(scale=scale, size=shape), dtype)
    x, kernel = arr(B, T, F), arr(F, n * U, scale=0.5)
    xb, rk = arr(n * U, scale=0.3), arr(U, n * U, scale=0.5)
    rb = arr(n * U, scale=0.3) if kind == "gru" else None
    states = tuple(arr(B, U, scale=0.5) for _ in range(2 if kind == "lstm" else 1))
    mask = jnp.asarray(MASK) if masked else None
    rmask = jnp.asarray(rng.uniform(0, 2, (B, U)), dtype) if rmasked else None
    return (x, kernel, xb, rk, rb, states, rmask), mask


def _reference(spec, x, kernel, xb, rk, rb, states, mask, rmask):
    """The same forward math, differentiated by JAX's autodiff (no custom backward)."""
    return fused._forward(spec, x, kernel, xb, rk, rb, states, mask, rmask, save=False)[0]


@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_recurrence_vjp_equals_autodiff_of_forward(kind, monkeypatch):
    """Every input's gradient (the recurrent-dropout mask's too), with the small-step choices
    (per-gate backward products, projection inside the step) and the large-step ones."""
    cases = [
        (fused.Spec(kind, emit=emit, zero_output_for_mask=zo, reverse=rev), masked, rmasked,
         split)
        for emit, zo, rev, masked, rmasked, split in [(True, True, True, True, True, True),
                                                      (False, False, False, False, True, False)]
    ]

    def run():
        out = []
        for i, (spec, masked, rmasked, split) in enumerate(cases):
            monkeypatch.setattr(fused, "_small_step", lambda *_, small=split: small)
            args, mask = _recurrence_case(kind, jnp.float32, masked=masked, rmasked=rmasked,
                                          seed=i)

            def loss(f, x, kernel, xb, rk, rb, states, rmask, spec=spec, mask=mask, seed=i):
                out = f(spec, x, kernel, xb, rk, rb, states, mask, rmask)
                return _weighted_sum(out, seed)

            got = jax.grad(functools.partial(loss, fused.recurrence), argnums=range(7))(*args)
            want = jax.grad(functools.partial(loss, _reference), argnums=range(7))(*args)
            out.append((got, want))
        return out

    for got, want in _run(run):
        _assert_close(got, want)


def test_recurrence_other_activations_float64():
    """The custom backward against autodiff of the same forward for the non-default
    activations (the derivative table, written in terms of each activation's output); the
    forward itself is checked against NumPy in
    test_layer_other_activations_match_float64_reference."""
    cases = [("lstm", "relu", "tanh"), ("gru", "linear", "relu"), ("simple_rnn", "sigmoid", "")]
    with jax.enable_x64(True):

        def run():
            out = []
            for i, (kind, act, ract) in enumerate(cases):
                spec = fused.Spec(kind, activation=act, recurrent_activation=ract or "sigmoid")
                args, mask = _recurrence_case(kind, jnp.float64, masked=True, rmasked=False,
                                              seed=i)

                def loss(f, *args, spec=spec, mask=mask):
                    x, kernel, xb, rk, rb, states, rmask = args
                    return _weighted_sum(f(spec, x, kernel, xb, rk, rb, states, mask, rmask), 8)

                got = jax.grad(functools.partial(loss, fused.recurrence), argnums=range(6))
                want = jax.grad(functools.partial(loss, _reference), argnums=range(6))
                out.append((got(*args), want(*args)))
            return out

        for got, want in _run(run):
            _assert_close(got, want, rtol=1e-10, atol=1e-12)


# (kind, layer, activations, flags): the generic gate path (no one-tanh fast path) through the
# layers, both implementations, against the float64 NumPy reference (tests/reference.py).
ACTIVATION_CASES = [
    ("lstm", js.LSTM, dict(activation="relu"), dict(go_backwards=True)),
    ("gru", js.GRU, dict(activation="linear", recurrent_activation="relu"), {}),
    ("simple_rnn", js.SimpleRNN, dict(activation="sigmoid"), {}),
]


def _numeric_grads(f, arrays, eps=1e-6):
    """Central finite differences of the scalar f(arrays) w.r.t. every element of every
    float64 array."""
    arrays = [np.array(a, np.float64) for a in arrays]
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            up = f(arrays)
            a[idx] = old - eps
            down = f(arrays)
            a[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("kind, cls, acts, flags", ACTIVATION_CASES,
                         ids=[c[0] for c in ACTIVATION_CASES])
def test_layer_other_activations_match_float64_reference(kind, cls, acts, flags):
    """Outputs, final states and the gradients w.r.t. params, x and initial states, of
    implementation="fused" and "scan", against NumPy: the forward of tests/reference.py and
    central finite differences of it (float64, masked, random initial states)."""
    rng = np.random.default_rng(5)
    p = R.random_params(rng, kind, F, U)
    x = rng.normal(size=(B, T, F))
    init = tuple(rng.normal(scale=0.5, size=(B, U)) for _ in range(R.STATE_COUNT[kind]))
    weights = [rng.normal(size=(B, T, U))] + [rng.normal(size=(B, U)) for _ in init]

    def reference_loss(arrays):
        k, rk, bias, x_, *states = arrays
        outs = R.rnn(kind, {"kernel": k, "recurrent_kernel": rk, "bias": bias}, x_,
                     mask=MASK, initial_state=tuple(states), return_sequences=True,
                     return_state=True, **acts, **flags)
        return sum(float(np.sum(o * w)) for o, w in zip(outs, weights, strict=True))

    names = ("kernel", "recurrent_kernel", "bias")
    want_out = R.rnn(kind, p, x, mask=MASK, initial_state=init, return_sequences=True,
                     return_state=True, **acts, **flags)
    want_grads = _numeric_grads(reference_loss, [p[n] for n in names] + [x, *init])
    assert max(float(np.max(np.abs(g))) for g in want_grads) > 0.1  # gradients that matter

    with jax.enable_x64(True):

        def run(params, x, init):
            out = {}
            for impl in ("fused", "scan"):
                layer = cls(U, return_sequences=True, return_state=True, implementation=impl,
                            dtype=jnp.float64, param_dtype=jnp.float64, **acts, **flags)

                def loss(params, x, init, layer=layer):
                    y = layer.apply({"params": params}, x, mask=MASK, initial_state=init)
                    total = sum(jnp.sum(o * w) for o, w in zip(y, weights, strict=True))
                    return total, y

                (_, y), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
                    params, x, init)
                out[impl] = (y, g)
            return out

        params = {n: jnp.asarray(p[n]) for n in names}
        got = _run(run, params, jnp.asarray(x), tuple(jnp.asarray(s) for s in init))
        assert _uses_fused(cls(U, implementation="fused", **acts, **flags),
                                jnp.ones((B, T, F)))
    for impl, (y, (g_params, g_x, g_init)) in got.items():
        chex.assert_type(jax.tree.leaves(y), jnp.float64)
        _assert_close(list(y), list(want_out), rtol=1e-10, atol=1e-12)
        g_list = [g_params[n] for n in names] + [g_x, *g_init]
        labels = [*names, "x", *(f"initial_state[{i}]" for i in range(len(init)))]
        for g, w, name in zip(g_list, want_grads, labels, strict=True):
            np.testing.assert_allclose(np.asarray(g), w, rtol=1e-6, atol=1e-8,
                                       err_msg=f"{impl} d{name}")


def test_recurrence_check_grads_float64():
    """Against finite differences, every input (the recurrent-dropout mask too)."""
    with jax.enable_x64(True):
        args, mask = _recurrence_case("lstm", jnp.float64, masked=True, rmasked=True)
        spec = fused.Spec("lstm", emit=True, reverse=True, zero_output_for_mask=True)

        @jax.jit
        def f(x, kernel, xb, rk, rb, states, rmask):
            return fused.recurrence(spec, x, kernel, xb, rk, rb, states, mask, rmask)

        check_grads(f, args, order=1, modes=["rev"])


@pytest.mark.parametrize("name", ["gru"])  # LSTM: test_recurrence_check_grads_float64
def test_layer_check_grads_float64(name):
    with jax.enable_x64(True):
        params = _params(name, jnp.float64)
        x, init = _data(name, np.float64)
        layer = LAYERS[name][0](U, return_sequences=True, return_state=True, go_backwards=True,
                                implementation="fused", dtype=jnp.float64,
                                param_dtype=jnp.float64)

        @jax.jit
        def f(params, x, init):
            return layer.apply({"params": params}, x, mask=MASK, initial_state=init)

        chex.assert_type(jax.tree.leaves(f(params, x, init)), jnp.float64)
        check_grads(f, (params, x, init), order=1, modes=["rev"])


# --------------------------------------------------------------------------------------------
# Transformations: vmap over replicas (as jaxseq.fit_replicas does) under jit.


def test_vmap_over_replicas_matches_per_replica_scan():
    layer = js.LSTM(U, return_sequences=True, implementation="fused")
    ref = js.LSTM(U, return_sequences=True, implementation="scan")
    x, _ = _data("lstm")
    p0 = _params("lstm")
    params = jax.tree.map(lambda p: jnp.stack([p, 0.5 * p[::-1]]), p0)  # two distinct replicas

    def grads(model, params):
        return jax.grad(lambda p: _weighted_sum(model.apply({"params": p}, x, mask=MASK), 4))(
            params
        )

    got, want = _run(
        lambda params: (jax.vmap(functools.partial(grads, layer))(params),
                        [grads(ref, jax.tree.map(lambda p, r=r: p[r], params)) for r in range(2)]),
        params,
    )
    for r in range(2):
        _assert_close(jax.tree.map(lambda p, r=r: p[r], got), want[r])


# --------------------------------------------------------------------------------------------
# Selection: "auto" takes the fused path where supported; forced choices never fall back.


def _uses_fused(layer, x) -> bool:
    """Whether the layer runs the fused recurrence (its custom_jvp's primal function)."""
    params = jax.eval_shape(layer.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda p: layer.apply(p, x))(params)
    return "_fused_recurrence" in str(jaxpr)


@pytest.mark.parametrize(
    "layer, fused_expected",
    [
        (js.LSTM(U), True),
        (js.GRU(U), True),
        (js.SimpleRNN(U, activation="relu"), True),
        (js.LSTM(U, recurrent_activation="hard_sigmoid"), False),
        (js.GRU(U, reset_after=False), False),
        (js.LSTM(U, implementation="scan"), False),
    ],
    ids=["lstm", "gru", "simple_rnn_relu", "lstm_hard_sigmoid", "gru_reset_before", "scan"],
)
def test_auto_selection(layer, fused_expected):
    x = jnp.ones((B, T, F))
    assert _uses_fused(layer, x) == fused_expected


def test_unsupported_forced_fused_raises():
    with pytest.raises(ValueError, match=r"GRU\(implementation='fused'\).*reset_after=False"):
        layer = js.GRU(U, reset_after=False, implementation="fused")
        jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((B, T, F)))


def test_there_is_no_cudnn_stub():
    # a name that could only raise is gone: "cudnn" is an unknown implementation like any other
    with pytest.raises(ValueError, match=r"implementation to be one of 'auto', 'scan', 'fused'"):
        layer = js.LSTM(U, implementation="cudnn")
        jax.eval_shape(layer.init, jax.random.key(0), jnp.ones((B, T, F)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["lstm", "gru", "simple_rnn"])
def test_residual_bytes_equal_what_the_forward_saves(kind, dtype):
    """`residual_bytes` against a measurement: the arrays that `jax.vjp` of the fused forward
    keeps for its pullback, less the inputs it keeps (the same objects as the arguments)."""
    t, b, u, f = 7, 3, 5, 2
    n = {"lstm": 4, "gru": 3, "simple_rnn": 1}[kind]
    rng = np.random.default_rng(0)
    arr = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
    args = (arr(b, t, f), arr(f, n * u), arr(n * u), arr(u, n * u),
            arr(n * u) if kind == "gru" else None,
            tuple(arr(b, u) for _ in range(2 if kind == "lstm" else 1)))
    spec = fused.Spec(kind)
    _, pullback = jax.vjp(functools.partial(fused.recurrence, spec), *args)
    inputs = jax.tree.leaves(args)
    saved = [a for a in jax.tree.leaves(pullback) if not any(a is i for i in inputs)]
    # the loop's factors time-major (the tangent scan's inputs), h_prev batch-major
    assert saved and all(a.shape[:2] in ((b, t), (t, b)) and a.dtype == dtype for a in saved)
    measured = sum(a.size * a.dtype.itemsize for a in saved)
    assert fused.residual_bytes(spec, t=t, b=b, u=u, itemsize=jnp.dtype(dtype).itemsize) \
        == measured


@pytest.mark.parametrize("m, k, n", [(4, 5, 20), (16, 8, 8), (20, 5, 20), (16, 32, 128)])
def test_step_products_equal_float64_and_tiny_ones_are_not_dots(m, k, n):
    # products.matmul / matmul_t: a tiny product (m*k*n <= SMALL_PRODUCT) is multiply + sum, a
    # larger one the dot; both equal the float64 product, alone and under vmap (replicas).
    from jaxseq.products import SMALL_PRODUCT, matmul, matmul_t

    rng = np.random.default_rng(m * k * n)
    a, w = rng.normal(size=(3, m, k)), rng.normal(size=(3, k, n))
    g = rng.normal(size=(3, m, n))
    f32 = lambda *xs: [jnp.asarray(x, jnp.float32) for x in xs]
    a32, w32, g32 = f32(a, w, g)
    for f, args, want in ((matmul, (a32, w32), a @ w),
                          (matmul_t, (a32, g32), np.swapaxes(a, 1, 2) @ g)):
        np.testing.assert_allclose(jax.vmap(f)(*args), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f(args[0][1], args[1][1]), want[1], rtol=1e-5, atol=1e-5)
        dots = str(jax.make_jaxpr(f)(args[0][0], args[1][0])).count("dot_general")
        assert dots == (0 if m * k * n <= SMALL_PRODUCT else 1)
    # bfloat16 always takes the dot (it accumulates in float32; a bf16 sum would not)
    bf = jnp.asarray(a[0], jnp.bfloat16), jnp.asarray(w[0], jnp.bfloat16)
    assert str(jax.make_jaxpr(matmul)(*bf)).count("dot_general") == 1


def test_stacked_products_count_every_replica_and_differentiate():
    # products.fused_matmul(_t): under vmap (nested too) the size rule counts all replicas'
    # products together: 3 x (8, 5) @ (5, 20) = 2400 multiply-adds is one multiply + sum,
    # 30 x = 24000 (and 5 x 6 nested) the batched dot. Values and gradients equal float64.
    from jaxseq.products import SMALL_STACKED, fused_matmul, fused_matmul_t

    assert 3 * 800 <= SMALL_STACKED < 30 * 800
    rng = np.random.default_rng(0)
    a, w = rng.normal(size=(30, 8, 5)), rng.normal(size=(30, 5, 20))
    g = rng.normal(size=(30, 8, 20))
    a32, w32, g32 = (jnp.asarray(v, jnp.float32) for v in (a, w, g))
    for f, second, want in ((fused_matmul, w32, a @ w),
                            (fused_matmul_t, g32, np.swapaxes(a, 1, 2) @ g)):
        for r, fn in ((3, jax.vmap(f)), (30, jax.vmap(f)),
                      (30, lambda x, y, f=f: jax.vmap(jax.vmap(f))(
                          x.reshape(5, 6, *x.shape[1:]), y.reshape(5, 6, *y.shape[1:])))):
            out = jax.jit(fn)(a32[:r], second[:r]).reshape(r, *want.shape[1:])
            np.testing.assert_allclose(out, want[:r], rtol=1e-5, atol=1e-5)
            dots = str(jax.make_jaxpr(fn)(a32[:r], second[:r])).count("dot_general")
            assert dots == (0 if r * 800 <= SMALL_STACKED else 1)
    # only the first operand mapped (weights shared), and a second derivative of each product
    np.testing.assert_allclose(jax.jit(jax.vmap(fused_matmul, in_axes=(0, None)))(a32[:3], w32[0]),
                               a[:3] @ w[0], rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):  # float64: the two orders of summation agree to ~1e-12
        for f, ref in ((fused_matmul, jnp.matmul), (fused_matmul_t, lambda x, y: x.T @ y)):
            other = jnp.asarray(w[0] if f is fused_matmul else g[0])
            gg = [jax.jit(jax.grad(lambda x, h=h, o=other: jnp.sum(jax.grad(
                lambda u: jnp.sum(jnp.tanh(h(u, o))))(x) ** 2)))(jnp.asarray(a[0]))
                for h in (f, ref)]
            np.testing.assert_allclose(gg[0], gg[1], rtol=1e-10)
    # reverse mode, alone and under vmap: d/da sum((a @ w) * g) = g @ w.T, d/dw = a.T @ g
    loss = lambda x, y, z: jnp.sum(fused_matmul(x, y) * z)
    da, dw = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(a32, w32, g32)
    np.testing.assert_allclose(da, g @ np.swapaxes(w, 1, 2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, np.swapaxes(a, 1, 2) @ g, rtol=1e-5, atol=1e-5)
    loss_t = lambda x, y, z: jnp.sum(fused_matmul_t(x, y) * z)
    k = rng.normal(size=(5, 20))
    da, dg = jax.jit(jax.grad(loss_t, argnums=(0, 1)))(a32[0], g32[0],
                                                       jnp.asarray(k, jnp.float32))
    np.testing.assert_allclose(da, g[0] @ k.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dg, a[0] @ k, rtol=1e-5, atol=1e-5)


def test_hessians_and_second_derivatives_through_the_fused_path():
    # The fused backward's products (products.fused_matmul) differentiate in forward mode
    # (forward-over-reverse: jax.hessian) and reverse mode (reverse-over-reverse), as the scan
    # path does; both Hessians equal.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 1)), jnp.float32)
    layers = {impl: js.LSTM(2, implementation=impl) for impl in ("fused", "scan")}
    params = layers["scan"].init(jax.random.PRNGKey(0), x)["params"]
    # Under one jit per path: the same transformations, traced once and compiled together
    # (eager, every primitive of the second-order programs dispatches and compiles alone).
    def second(m):
        out = lambda u: jnp.sum(m.apply({"params": params}, u) ** 2)
        return jax.jit(lambda v: (jax.hessian(out)(v),
                                  jax.grad(lambda w: jnp.sum(jax.grad(out)(w) ** 2))(v)))(x)

    (hess, gg), (hess_scan, gg_scan) = (second(layers[impl]) for impl in ("fused", "scan"))
    np.testing.assert_allclose(hess, hess_scan, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gg, gg_scan, rtol=1e-4, atol=1e-5)
