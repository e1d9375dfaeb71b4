"""Property-based: random ranks, sizes (zeros included), dtypes and argument values thrown at the
public entry points. Each call either works, with the documented output shape, or raises
ValueError / TypeError from jaxseq's own code naming what was wrong, never a raw JAX, Flax or
NumPy error. Seeded (derandomized), a few hundred examples in all."""

import functools
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


def _call(fn, check_ok, names, allowed=()):
    """`fn()` works and passes `check_ok`, or raises ValueError / TypeError (or one of
    `allowed`, e.g. FileNotFoundError for a missing file) from jaxseq's own code, naming one of
    `names`."""
    try:
        out = fn()
    except (ValueError, TypeError, *allowed) as err:
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


# --- files, replicas, cross-validation, statistics and interop ----------------------------------

FILE_NAMES = ("path", "params", "like", "model", "variables", "x")


def _path(kind: str, tmp) -> object:
    """A path argument of some kind: good, missing, a directory, a foreign file, not a path."""
    if kind == "good":
        return tmp / "file.msgpack"
    if kind == "pathlike":
        return tmp / "sub" / ".." / "file.msgpack"
    if kind == "dir":
        return tmp
    if kind == "missing_dir":
        return str(tmp / "missing" / "file.msgpack")
    if kind == "foreign":
        (tmp / "foreign").write_bytes(b"\x80\x04\x95 not a jaxseq file")
        return tmp / "foreign"
    return {"none": None, "int": 3, "bytes": b"file.msgpack", "empty": ""}[kind]


PATH_KINDS = ["good", "pathlike", "dir", "missing_dir", "foreign", "none", "int", "bytes",
              "empty"]


@SETTINGS(60)
@given(save_to=st.sampled_from(PATH_KINDS), load_from=st.sampled_from(PATH_KINDS),
       params=st.one_of(st.just("good"), arrays(2), st.just({"a": "text"}), st.none()),
       like=st.sampled_from([None, "good", "other", 3]),
       x=st.one_of(st.none(), st.just(GOOD_X), arrays(3)))
def test_files_take_any_arguments_or_say_what_is_wrong(tmp_path_factory, save_to, load_from,
                                                       params, like, x):
    tmp = tmp_path_factory.mktemp("files")
    (tmp / "sub").mkdir()
    params = PARAMS if isinstance(params, str) else params
    like = {"good": PARAMS, "other": {"w": np.ones(2)}}.get(like, like)

    def ok_load_params(out):
        assert set(jax.tree.leaves(jax.tree.map(np.shape, out))) <= set(
            jax.tree.leaves(jax.tree.map(np.shape, PARAMS)))

    def ok_load_model(out):
        model, variables = out  # variables as saved: no "params" when none were given
        assert model == MODEL and isinstance(variables, dict)

    _call(lambda: js.save_params(_path(save_to, tmp), params), lambda out: None, FILE_NAMES,
          allowed=(FileNotFoundError,))
    _call(lambda: js.load_params(_path(load_from, tmp), like=like), ok_load_params,
          FILE_NAMES, allowed=(FileNotFoundError,))
    _call(lambda: js.save_model(_path(save_to, tmp), MODEL, {"params": params}, x=x),
          lambda out: None, FILE_NAMES, allowed=(FileNotFoundError,))
    _call(lambda: js.load_model(_path(load_from, tmp)), ok_load_model, FILE_NAMES,
          allowed=(FileNotFoundError,))


SEEDS = [None, True, 2.0, 0, -1, 10**20, 2**31 - 1, [], [1, 1], [1, "a"], "ab", 2, [0, 5],
         range(2), np.arange(2), [2**40], {"a": 1}, [1.0, 2.0]]


@SETTINGS(len(SEEDS))
@given(seeds=st.sampled_from(SEEDS))
def test_fit_replicas_takes_any_seeds_or_says_what_is_wrong(seeds):
    def ok(out):
        states, history = out
        assert history.loss.shape == (len(list(seeds)) if not isinstance(seeds, int) else seeds,
                                      1)

    _call(lambda: js.fit_replicas(MODEL, GOOD_X, np.ones((4, 1), np.float32), seeds=seeds,
                                  epochs=1), ok, ("seeds",))


@SETTINGS(40)
@given(splitter=st.sampled_from(["kfold", "nope", 3, None, [([0, 1], [2, 3])], [([0, 1],)],
                                 [([0, 9], [1])], [(["a"], [1])], [([0, 1], [1, 2])], [],
                                 [[[0, 1], [2, 3]], "x"]]),
       folds=st.sampled_from([2, 0, 1.5, "2", 9]),
       mesh=st.sampled_from([None, 3, "mesh"]), seeds=st.sampled_from([1, None, [0, 1]]))
def test_cross_validate_takes_any_arguments_or_says_what_is_wrong(splitter, folds, mesh, seeds):
    def ok(out):
        assert out.scores["loss"].shape == (len(out.splits), len(out.seeds))

    _call(lambda: js.evaluation.cross_validate(
        MODEL, GOOD_X, np.ones((4, 1), np.float32), epochs=1, splitter=splitter, folds=folds,
        mesh=mesh, seeds=seeds), ok, ("splitter", "split", "folds", "mesh", "seeds"))


SCORES = st.one_of(arrays(2), st.just(["a", "b", "c"]), st.just([1.0, 2.0, 4.0]),
                   st.just([1.0, np.nan, 2.0]), st.just([1 + 2j, 3 + 0j]))


@SETTINGS(80)
@given(a=SCORES, b=SCORES, alpha=st.sampled_from([None, 0.05, 0, 1, "0.05", True, np.nan]),
       n_boot=st.sampled_from([1.5, 0, 10, None, -5]), paired=st.sampled_from([True, False]),
       seed=st.sampled_from([0, -1, 1.5, None]))
def test_compare_takes_any_arguments_or_says_what_is_wrong(a, b, alpha, n_boot, paired, seed):
    pytest.importorskip("scipy")

    def ok(out):
        assert set(out) >= {"diff", "ci95", "p_value", "verdict"}

    _call(lambda: js.evaluation.compare(a, b, alpha=alpha, n_boot=n_boot, paired=paired,
                                        seed=seed), ok,
          ("scores_a", "scores_b", "scores", "alpha", "n_boot", "seed"))


@functools.cache
def _interop_objects():
    """Built once: the calls may write weights into them, never change their shapes."""
    keras = pytest.importorskip("keras")
    torch = pytest.importorskip("torch")
    k_lstm = keras.layers.LSTM(2)
    k_lstm.build((None, 3, 2))
    k_dense = keras.layers.Dense(1)
    k_dense.build((None, 2))
    k_conv = keras.layers.Conv1D(2, 3)
    k_conv.build((None, 5, 2))
    unbuilt = keras.layers.GRU(2)
    return {"none": None, "int": 3, "str": "lstm", "dict": {}, "keras_lstm": k_lstm,
            "keras_dense": k_dense, "keras_conv": k_conv, "keras_unbuilt": unbuilt,
            "torch_lstm": torch.nn.LSTM(2, 2, batch_first=True),
            "torch_gru_stack": torch.nn.GRU(2, 3, num_layers=2, batch_first=True),
            "torch_linear": torch.nn.Linear(2, 2),
            "torch_time_major": torch.nn.LSTM(2, 2), "jaxseq": js.LSTM(2),
            "lstm2": js.LSTM(2).init(jax.random.PRNGKey(0), np.ones((1, 3, 2)))["params"],
            "lstm3": js.LSTM(3).init(jax.random.PRNGKey(0), np.ones((1, 3, 2)))["params"]}


INTEROP = ("from_keras", "to_keras", "jaxseq_model_from_keras", "from_torch", "to_torch",
           "jaxseq_model_from_torch")
INTEROP_KINDS = ["none", "int", "str", "dict", "keras_lstm", "keras_dense", "keras_conv",
                 "keras_unbuilt", "torch_lstm", "torch_gru_stack", "torch_linear",
                 "torch_time_major", "jaxseq"]
INTEROP_NAMES = ("layer", "model", "module", "params", "keras", "torch", "Keras", "PyTorch",
                 "LSTM", "GRU", "Dense", "Linear", "batch_first")


@SETTINGS(50)
@given(fn=st.sampled_from(INTEROP), obj=st.sampled_from(INTEROP_KINDS),
       params=st.sampled_from(["none", "empty", "arrays", "lstm2", "lstm3"]))
def test_interop_takes_any_arguments_or_says_what_is_wrong(fn, obj, params):
    from jaxseq import interop

    with jax.numpy_rank_promotion("allow"):  # Keras' own initializers broadcast ranks
        objects = _interop_objects()
    p = {"none": None, "empty": {}, "arrays": np.ones(3), "lstm2": objects["lstm2"],
         "lstm3": objects["lstm3"]}[params]
    call = getattr(interop, fn)
    run = (lambda: call(p, objects[obj])) if fn.startswith("to_") else (
        lambda: call(objects[obj]))
    _call(run, lambda out: None, INTEROP_NAMES)
