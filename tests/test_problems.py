"""Tests for jaxseq.problems: shapes, dtypes, targets, determinism, baselines, errors."""

import re

import numpy as np
import pytest

from jaxseq import problems as P

SMALL = dict(n_train=40, n_test=16)


def _mse(pred, target):
    return float(np.mean((np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2))


def _check_split(s, x_tail, y_tail, n_train=40, n_test=16):
    assert isinstance(s, P.Split)
    assert s.x_train.shape == (n_train, *x_tail) and s.x_test.shape == (n_test, *x_tail)
    assert s.y_train.shape == (n_train, *y_tail) and s.y_test.shape == (n_test, *y_tail)
    for a in (s.x_train, s.y_train, s.x_test, s.y_test):
        assert a.dtype == np.float32
    assert isinstance(s.baseline_mse, float) and isinstance(s.baseline, str) and s.baseline


def _arrays(s):
    return (s.x_train, s.y_train, s.x_test, s.y_test)


# ---------------------------------------------------------------- echo_sequence / frame


def test_echo_sequence_values():
    out = P.echo_sequence(5)
    assert out.dtype == np.float32 and out.shape == (5,)
    np.testing.assert_allclose(out, [0.0, 0.2, 0.4, 0.6, 0.8], rtol=0, atol=1e-7)
    assert P.echo_sequence(1).tolist() == [0.0]
    out = P.echo_sequence(np.int64(8))
    np.testing.assert_allclose(out, np.arange(8) / 8, atol=1e-7)


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize(
    "framing, xs, ys",
    [
        ("one_to_one", lambda n: (n, 1, 1), lambda n: (n, 1)),
        ("many_to_one", lambda n: (1, n, 1), lambda n: (1, n)),
        ("many_to_many", lambda n: (1, n, 1), lambda n: (1, n, 1)),
    ],
)
def test_frame_shapes_and_values(n, framing, xs, ys):
    seq = P.echo_sequence(n)
    x, y = P.frame(seq, framing)
    assert x.shape == xs(n) and y.shape == ys(n)
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x.reshape(-1), seq)
    np.testing.assert_array_equal(y.reshape(-1), seq)


def test_frame_list_input_and_no_aliasing():
    x, y = P.frame([1, 2, 3], "many_to_many")
    assert x.dtype == np.float32
    y[0, 0, 0] = 99.0
    assert x[0, 0, 0] == 1.0
    seq = np.zeros(3, np.float32)
    x, _ = P.frame(seq, "one_to_one")
    x[0, 0, 0] = 5.0
    assert seq[0] == 0.0
    assert set(P.FRAMINGS) == {"one_to_one", "many_to_one", "many_to_many"}


# ---------------------------------------------------------------- builders


@pytest.mark.parametrize("length, lag", [(1, 0), (6, 2)])
def test_echo_shapes_targets_baseline(length, lag):
    s = P.echo(length, lag, **SMALL)
    _check_split(s, (length, 1), (length, 1))
    for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        assert x.min() >= 0.0 and x.max() < 1.0
        np.testing.assert_array_equal(y[:, :lag], 0.0)
        for t in range(lag, length):
            np.testing.assert_array_equal(y[:, t], x[:, t - lag])
    expected = _mse(np.broadcast_to(s.y_train.mean(axis=0), s.y_test.shape), s.y_test)
    assert s.baseline_mse == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("length", [2, 9])
def test_adding_problem_shapes_targets_baseline(length):
    s = P.adding_problem(length, **SMALL)
    _check_split(s, (length, 2), (1,))
    half = length // 2
    for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        marker = x[:, :, 1]
        assert set(np.unique(marker)) <= {0.0, 1.0}
        np.testing.assert_array_equal(marker[:, :half].sum(1), 1.0)
        np.testing.assert_array_equal(marker[:, half:].sum(1), 1.0)
        for i in range(len(x)):
            marked = [x[i, t, 0] for t in range(length) if x[i, t, 1] == 1.0]
            assert y[i, 0] == pytest.approx(marked[0] + marked[1], abs=1e-6)
    assert s.baseline_mse == pytest.approx(_mse(np.ones_like(s.y_test), s.y_test), rel=1e-6)


def test_adding_problem_baseline_near_one_sixth():
    s = P.adding_problem(10, n_train=1, n_test=4000)
    assert s.baseline_mse == pytest.approx(1 / 6, abs=0.02)


@pytest.mark.parametrize("length, delay, alphabet", [(1, 1, 2), (5, 3, 8)])
def test_copy_task_shapes_targets_baseline(length, delay, alphabet):
    s = P.copy_task(length, delay, alphabet, **SMALL)
    t = length + delay
    _check_split(s, (t, alphabet), (t, alphabet))
    for x, y in ((s.x_train, s.y_train), (s.x_test, s.y_test)):
        np.testing.assert_array_equal(x[:, :length].sum(-1), 1.0)  # one-hot symbols
        np.testing.assert_array_equal(x[:, length:], 0.0)  # blanks
        np.testing.assert_array_equal(y[:, :delay], 0.0)
        for i in range(length):
            np.testing.assert_array_equal(y[:, delay + i], x[:, i])
    expected = _mse(np.broadcast_to(s.y_train.mean(axis=0), s.y_test.shape), s.y_test)
    assert s.baseline_mse == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n_in, n_out", [(3, 1), (5, 4)])
def test_sine_forecast_shapes_baseline(n_in, n_out):
    s = P.sine_forecast(30, n_in, n_out, n_series=4, **SMALL)
    _check_split(s, (n_in, 1), (n_out,))
    persist = np.repeat(s.x_test[:, -1, :], n_out, axis=1)
    assert s.baseline_mse == pytest.approx(_mse(persist, s.y_test), rel=1e-6)
    assert np.isfinite(s.x_train).all() and np.abs(s.x_train).max() < 3.0


def test_sine_forecast_noiseless_is_smooth():
    s = P.sine_forecast(40, 8, 1, n_series=2, noise=0.0, n_train=10, n_test=10)
    # Sines with at most 0.1 cycles/step move at most 2*pi*0.1 per step.
    assert np.abs(np.diff(s.x_train[:, :, 0], axis=1)).max() <= 2 * np.pi * 0.1 + 1e-5
    assert np.abs(s.y_train[:, 0] - s.x_train[:, -1, 0]).max() <= 2 * np.pi * 0.1 + 1e-5


BUILDERS = {
    "echo": lambda seed: P.echo(5, 1, seed=seed, **SMALL),
    "adding": lambda seed: P.adding_problem(6, seed=seed, **SMALL),
    "copy": lambda seed: P.copy_task(3, 2, 4, seed=seed, **SMALL),
    "sine": lambda seed: P.sine_forecast(30, 4, 2, n_series=4, seed=seed, **SMALL),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builders_deterministic_by_seed(name):
    a, b, c = BUILDERS[name](0), BUILDERS[name](0), BUILDERS[name](1)
    for u, v in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(u, v)
    assert a.baseline_mse == b.baseline_mse
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.y_test, c.y_test)


# ---------------------------------------------------------------- moving_square


def test_moving_square_shapes_motion_and_baseline():
    x, y = P.moving_square(64, 6, 12, 0, side=3)
    assert x.shape == y.shape == (64, 5, 12, 12, 1) and x.dtype == y.dtype == np.float32
    assert set(np.unique(x)) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x one frame later
    video = np.concatenate([x, y[:, -1:]], axis=1)[..., 0]  # (n, frames, size, size)
    assert (video.sum(axis=(2, 3)) == 9).all()  # the whole square in every frame
    rows, cols = np.arange(12)[:, None], np.arange(12)[None, :]
    centre = np.stack([(video * rows).sum((2, 3)), (video * cols).sum((2, 3))], -1) / 9
    step = np.diff(centre, axis=1)  # (n, frames - 1, 2): constant, one pixel, not zero
    np.testing.assert_allclose(step, np.broadcast_to(step[:, :1], step.shape))
    assert set(np.unique(step)) <= {-1.0, 0.0, 1.0} and (np.abs(step).sum(-1) > 0).all()
    diagonal = np.abs(step[:, 0]).sum(-1) == 2  # persistence: 2 side or 2 (2 side - 1) pixels
    want = np.where(diagonal, 2 * 5, 2 * 3) / 144
    np.testing.assert_allclose(((x - y) ** 2).mean(axis=(1, 2, 3, 4)), want)
    a, b = P.moving_square(4, 6, 12, 1), P.moving_square(4, 6, 12, 1)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], P.moving_square(4, 6, 12, 2)[0])


# ---------------------------------------------------------------- series_to_supervised


@pytest.mark.parametrize("shape", [(10,), (9, 3)])
@pytest.mark.parametrize("n_in, n_out", [(1, 1), (3, 2)])
def test_series_to_supervised_against_loop(shape, n_in, n_out):
    series = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    x, y = P.series_to_supervised(series, n_in, n_out)
    s2 = series.reshape(shape[0], -1)
    n = shape[0] - n_in - n_out + 1
    assert x.shape == (n, n_in, s2.shape[1]) and y.shape == (n, n_out, s2.shape[1])
    assert x.dtype == np.float64 and y.dtype == np.float64  # the input's float dtype
    for i in range(n):
        np.testing.assert_array_equal(x[i], s2[i : i + n_in])
        np.testing.assert_array_equal(y[i], s2[i + n_in : i + n_in + n_out])


@pytest.mark.parametrize("dtype, want", [(np.float64, np.float64), (np.float32, np.float32),
                                         (np.float16, np.float16), (np.int64, np.float32),
                                         (bool, np.float32)])
def test_series_to_supervised_keeps_a_float_dtype(dtype, want):
    series = (np.arange(12).reshape(6, 2) % 2).astype(dtype)
    x, y = P.series_to_supervised(series, 2, 1)
    assert x.dtype == want and y.dtype == want
    np.testing.assert_array_equal(x[1], series[1:3].astype(want))
    fine = np.linspace(0, 1, 7)  # float64 values float32 would round
    x, y = P.series_to_supervised(fine, 3, 2)
    np.testing.assert_array_equal(y[:, :, 0], [fine[3:5], fine[4:6], fine[5:7]])


@pytest.mark.parametrize("cols, want", [(2, [2]), ([0, 2], [0, 2]), ((-1,), [3]),
                                        (np.array([3, 1]), [3, 1]), (None, [0, 1, 2, 3])])
def test_series_to_supervised_target_columns(cols, want):
    series = np.arange(40.0).reshape(10, 4)
    x, y = P.series_to_supervised(series, 3, 2, target_columns=cols)
    assert x.shape == (6, 3, 4) and y.shape == (6, 2, len(want))
    for i in range(6):  # the loop reference: every column in, the chosen ones out
        np.testing.assert_array_equal(x[i], series[i:i + 3])
        np.testing.assert_array_equal(y[i], series[i + 3:i + 5][:, want])


class _Frame:
    """What series_to_supervised reads of a pandas DataFrame: `columns` and `__array__`."""

    columns = ("temp", "rain")

    def __array__(self, dtype=None, copy=None):
        return np.stack([np.arange(6.0), np.arange(6.0) * 10], axis=1)


def test_series_to_supervised_target_columns_by_dataframe_name():
    frame = _Frame()
    x, y = P.series_to_supervised(frame, 2, 1, target_columns="rain")
    assert x.shape == (4, 2, 2) and y.tolist() == [[[20.0]], [[30.0]], [[40.0]], [[50.0]]]
    with pytest.raises(ValueError, match=r"'wind' is not among the DataFrame's columns"):
        P.series_to_supervised(frame, 2, 1, target_columns=["temp", "wind"])


@pytest.mark.parametrize("cols, error, words", [
    (4, ValueError, r"indices in \[-4, 4\) for a series with f=4 columns; got 4"),
    ([-5], ValueError, r"got -5"),
    ([], ValueError, "at least one target column"),
    ([1, -3], ValueError, "distinct target columns"),
    (1.0, TypeError, "target_columns to be None"),
    ([True], TypeError, "int indices or column names"),
    ("a", ValueError, "not a DataFrame"),
])
def test_series_to_supervised_bad_target_columns(cols, error, words):
    with pytest.raises(error, match=words):
        P.series_to_supervised(np.zeros((6, 4)), 2, 1, target_columns=cols)


def test_series_to_supervised_exact_fit_and_copy():
    series = np.arange(4.0, dtype=np.float32)
    x, y = P.series_to_supervised(series, 3, 1)
    assert x.shape == (1, 3, 1) and y.tolist() == [[[3.0]]]
    x[0, 0, 0] = -1.0
    assert series[0] == 0.0


# ---------------------------------------------------------------- pad_sequences


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_pad_sequences_1d(padding):
    seqs = [np.array([1.0, 2.0]), np.array([3.0]), np.array([4.0, 5.0, 6.0])]
    padded, mask = P.pad_sequences(seqs, padding=padding, value=-1.0)
    assert padded.shape == (3, 3, 1) and padded.dtype == np.float32
    assert mask.shape == (3, 3) and mask.dtype == np.bool_
    if padding == "post":
        want = [[1, 2, -1], [3, -1, -1], [4, 5, 6]]
        want_mask = [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    else:
        want = [[-1, 1, 2], [-1, -1, 3], [4, 5, 6]]
        want_mask = [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    np.testing.assert_array_equal(padded[..., 0], want)
    np.testing.assert_array_equal(mask, np.array(want_mask, bool))


def test_pad_sequences_2d_maxlen_dtype():
    seqs = [np.ones((2, 3)), np.full((4, 3), 2.0)]
    padded, mask = P.pad_sequences(seqs, maxlen=6, dtype=np.float64)
    assert padded.shape == (2, 6, 3) and padded.dtype == np.float64
    np.testing.assert_array_equal(padded[0, :2], 1.0)
    np.testing.assert_array_equal(padded[0, 2:], 0.0)
    np.testing.assert_array_equal(padded[1, :4], 2.0)
    assert mask.sum(1).tolist() == [2, 4]
    assert P.pad_sequences([[1, 2]], maxlen=2)[0].shape == (1, 2, 1)


def test_pad_sequences_empty_sequence_and_array_input():
    padded, mask = P.pad_sequences([np.zeros(0), [7.0]], padding="pre", value=3.0)
    assert padded[:, :, 0].tolist() == [[3.0], [7.0]] and mask.tolist() == [[False], [True]]
    padded, mask = P.pad_sequences(np.ones((2, 3)))  # a (b, t) array is b sequences
    assert padded.shape == (2, 3, 1) and mask.all()


# ---------------------------------------------------------------- error paths

ERRORS = [
    (lambda: P.echo_sequence(0), ValueError, "echo_sequence expects length >= 1; got 0."),
    (
        lambda: P.echo_sequence(2.0),
        TypeError,
        "echo_sequence expects length to be an int; got float 2.0",
    ),
    (lambda: P.echo_sequence(True), TypeError, "length to be an int; got bool True"),
    (lambda: P.frame(np.zeros((2, 2)), "one_to_one"), ValueError, r"seq to be 1-D.*shape \(2, 2\)"),
    (lambda: P.frame([], "one_to_one"), ValueError, r"seq .*non-empty; got shape \(0,\)"),
    (lambda: P.frame(["a"], "one_to_one"), TypeError, "seq to be numeric; got list"),
    (
        lambda: P.frame([1.0], "one_to_many"),
        ValueError,
        "framing to be one of .*many_to_many.*'one_to_many'",
    ),
    (lambda: P.echo(0), ValueError, "echo expects length >= 1; got 0"),
    (lambda: P.echo(4, 4), ValueError, "echo expects lag < length=4; got lag=4"),
    (lambda: P.echo(4, -1), ValueError, "echo expects lag >= 0; got -1"),
    (lambda: P.echo(4, n_train=0), ValueError, "echo expects n_train >= 1; got 0"),
    (lambda: P.echo(4, n_test=1.5), TypeError, "echo expects n_test to be an int; got float 1.5"),
    (lambda: P.echo(4, seed=-3), ValueError, "echo expects seed >= 0; got -3"),
    (lambda: P.echo(4, seed="x"), TypeError, "echo expects seed to be an int; got str 'x'"),
    (lambda: P.adding_problem(1), ValueError, "adding_problem expects length >= 2; got 1"),
    (
        lambda: P.adding_problem(5, n_test=0),
        ValueError,
        "adding_problem expects n_test >= 1; got 0",
    ),
    (lambda: P.copy_task(0, 2), ValueError, "copy_task expects length >= 1; got 0"),
    (lambda: P.copy_task(3, 0), ValueError, "copy_task expects delay >= 1; got 0"),
    (lambda: P.copy_task(3, 2, 1), ValueError, "copy_task expects alphabet >= 2; got 1"),
    (
        lambda: P.copy_task(3, None),
        TypeError,
        "copy_task expects delay to be an int; got NoneType None",
    ),
    (
        lambda: P.series_to_supervised(np.zeros(4), 3, 2),
        ValueError,
        re.escape("len(series) >= n_in + n_out = 5; got len(series)=4 (n_in=3, n_out=2)"),
    ),
    (lambda: P.series_to_supervised(np.zeros(4), 0), ValueError, "n_in >= 1; got 0"),
    (lambda: P.series_to_supervised(np.zeros(4), 1, 0), ValueError, "n_out >= 1; got 0"),
    (
        lambda: P.series_to_supervised(np.zeros((2, 2, 2)), 1),
        ValueError,
        re.escape("series of shape (t,) or (t, f); got shape (2, 2, 2)"),
    ),
    (lambda: P.series_to_supervised(["a", "b"], 1), TypeError, "series to be numeric; got list"),
    (lambda: P.sine_forecast(1), ValueError, "sine_forecast expects n_steps >= 2; got 1"),
    (
        lambda: P.sine_forecast(10, 8, 3),
        ValueError,
        "n_steps >= n_in \\+ n_out = 11; got n_steps=10",
    ),
    (lambda: P.sine_forecast(noise=-0.5), ValueError, "noise to be finite and >= 0; got -0.5"),
    (lambda: P.sine_forecast(noise="hi"), TypeError, "noise to be a float; got str 'hi'"),
    (lambda: P.sine_forecast(n_series=0), ValueError, "n_series >= 1; got 0"),
    (
        lambda: P.sine_forecast(30, 10, 1, n_series=2, n_train=100),
        ValueError,
        "n_train <= .* = 40 windows; got n_train=100",
    ),
    (lambda: P.moving_square(4, 12, 10), ValueError, "size - side >= frames - 1.*frames=12"),
    (lambda: P.moving_square(0), ValueError, "moving_square expects n >= 1; got 0"),
    (lambda: P.pad_sequences([]), ValueError, r"at least one sequence; got sequences=\[\]"),
    (lambda: P.pad_sequences("abc"), TypeError, "sequences to be a list of arrays; got str"),
    (
        lambda: P.pad_sequences([np.zeros(5), np.zeros(2)], maxlen=3),
        ValueError,
        r"length <= maxlen=3; got length 5 at sequences\[0\]\. Pass maxlen=None or maxlen>=5",
    ),
    (lambda: P.pad_sequences([np.zeros(2)], maxlen=0), ValueError, "maxlen >= 1; got 0"),
    (
        lambda: P.pad_sequences([[1.0]], dtype="nope"),
        TypeError,
        "dtype to be a NumPy dtype; got 'nope'",
    ),
    (
        lambda: P.pad_sequences([np.zeros(2)], padding="both"),
        ValueError,
        "padding to be one of .*'both'",
    ),
    (
        lambda: P.pad_sequences([np.zeros(2)], value="x"),
        TypeError,
        "value to be a number; got str 'x'",
    ),
    (
        lambda: P.pad_sequences([np.zeros((2, 3)), np.zeros((2, 4))]),
        ValueError,
        r"same f; got f in \[3, 4\]",
    ),
    (
        lambda: P.pad_sequences([np.zeros(2), np.zeros((1, 2, 3))]),
        ValueError,
        r"sequences\[1\] to be numeric of shape \(t,\) or \(t, f\); "
        r"got dtype float64 shape \(1, 2, 3\)",
    ),
]


@pytest.mark.parametrize("call, exc, pattern", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_argument_and_value(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()
