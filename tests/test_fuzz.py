"""Property-based: random ranks, sizes (zeros included), dtypes and argument values thrown at the
public entry points. Each call either works, with the documented output shape, or raises
ValueError / TypeError from jaxseq's own code naming what was wrong, never a raw JAX, Flax or
NumPy error. Seeded (derandomized), a few hundred examples in all."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import jaxseq as js  # noqa: E402

PACKAGE = Path(js.__file__).resolve().parent
def SETTINGS(n):  # noqa: N802 - a decorator
    return settings(derandomize=True, deadline=None, database=None, max_examples=n,
                    suppress_health_check=list(HealthCheck))
DTYPES = [np.float32, np.float16, jnp.bfloat16, np.int32, np.bool_, object, str]


@st.composite
def arrays(draw, max_rank=4):
    """Arrays of any rank up to max_rank (sizes 0-3) and dtype, or a list, a string, None."""
    kind = draw(st.sampled_from(["array", "array", "array", "list", "string", "none", "scalar"]))
    if kind == "none":
        return None
    if kind == "string":
        return "abc"
    if kind == "scalar":
        return draw(st.sampled_from([0.0, 1, True]))
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=max_rank)))
    dtype = draw(st.sampled_from(DTYPES))
    values = np.ones(shape, np.float32)
    if dtype is object:
        a = np.empty(shape, object)
        a[...] = None
        return a
    if dtype is str:
        return np.full(shape, "x")
    a = values.astype(np.float32).astype(dtype) if dtype is not jnp.bfloat16 else jnp.asarray(
        values, jnp.bfloat16)
    return a.tolist() if kind == "list" and dtype is np.float32 else a


def _from_jaxseq(err: BaseException) -> bool:
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and Path(last).resolve().is_relative_to(PACKAGE)


def _call(fn, check_ok, names):
    try:
        out = fn()
    except (ValueError, TypeError) as err:
        assert _from_jaxseq(err), f"raised outside jaxseq: {type(err).__name__}: {err}"
        msg = str(err)
        assert any(n in msg for n in names), f"the message names none of {names}: {msg}"
        return
    except Exception as err:  # noqa: BLE001 - the point of the test
        raise AssertionError(f"a raw {type(err).__name__}: {err}") from err
    check_ok(out)


LAYERS = {
    "lstm": lambda: js.LSTM(2, return_sequences=True),
    "gru": lambda: js.GRU(2),
    "simple_rnn": lambda: js.SimpleRNN(2, return_state=True),
    "bidirectional": lambda: js.Bidirectional(js.LSTM(2, return_sequences=True)),
    "time_distributed": lambda: js.TimeDistributed(js.Dense(2)),
}
NAMES = ("x", "mask", "initial_state", "features", "dtype")


@SETTINGS(150)
@given(kind=st.sampled_from(sorted(LAYERS)), x=arrays(), mask=arrays(3),
       state=st.one_of(st.none(), arrays(2), st.tuples(arrays(2), arrays(2))))
def test_layers_take_any_input_or_say_what_is_wrong(kind, x, mask, state):
    layer = LAYERS[kind]()
    kw = {}
    if mask is not None:
        kw["mask"] = mask
    if state is not None and kind != "time_distributed":
        kw["initial_state"] = state

    def run():  # abstract: traced, never compiled
        return jax.eval_shape(lambda: layer.init_with_output(jax.random.PRNGKey(0), x, **kw)[0])

    def ok(out):
        shape = np.shape(x)
        head = out[0] if isinstance(out, tuple) else out
        assert head.shape[0] == shape[0]

    _call(run, ok, NAMES)


MODEL = js.Sequential((js.GRU(2), js.Dense(1)))
GOOD_X = np.ones((4, 3, 2), np.float32)
PARAMS = MODEL.init(jax.random.PRNGKey(0), GOOD_X)["params"]
FIT_NAMES = ("x", "y", "batch_size", "epochs", "sample_weight", "mask", "seed", "shuffle",
             "verbose", "validation", "params", "optimizer", "loss", "metrics")


@SETTINGS(80)
@given(x=arrays(), y=arrays(3), batch_size=st.sampled_from([0, 1, 2, 7, -1, 2.5, "4", None]),
       epochs=st.sampled_from([0, 1, 2, -3, 1.5, None]),
       sample_weight=st.one_of(st.none(), arrays(2)),
       shuffle=st.sampled_from([True, False, "batch", 1]),
       verbose=st.sampled_from([0, 2, 3, "1"]))
def test_fit_takes_any_arguments_or_says_what_is_wrong(x, y, batch_size, epochs, sample_weight,
                                                       shuffle, verbose):
    import contextlib
    import io

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            return js.fit(MODEL, x, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                          sample_weight=sample_weight, verbose=verbose)

    def ok(out):
        state, history = out
        assert history.loss.shape == (epochs,)

    _call(run, ok, FIT_NAMES)


@SETTINGS(80)
@given(x=arrays(), y=arrays(3), batch_size=st.sampled_from([None, 0, 1, 3, -2, 1.5]),
       mask=st.one_of(st.none(), arrays(3)))
def test_predict_evaluate_summary_take_any_input_or_say_what_is_wrong(x, y, batch_size, mask):
    def ok_predict(out):
        assert out.shape == (np.shape(x)[0], 1)

    _call(lambda: js.predict(MODEL, PARAMS, x, batch_size=batch_size, mask=mask), ok_predict,
          FIT_NAMES)
    _call(lambda: js.evaluate(MODEL, PARAMS, x, y, batch_size=batch_size or 32, mask=mask),
          lambda out: np.isfinite(out), FIT_NAMES)
    _call(lambda: js.summary(MODEL, x), lambda out: "Total params" in out, FIT_NAMES)


def test_the_fuzz_can_see_a_raw_error():
    # the property can fail: a raw error from inside JAX is reported, not passed
    with pytest.raises(AssertionError, match="raw ZeroDivisionError"):
        _call(lambda: 1 / 0, lambda out: None, ("x",))
    with pytest.raises(AssertionError, match="raised outside jaxseq"):
        _call(lambda: jnp.ones(3).reshape(4), lambda out: None, ("x",))
