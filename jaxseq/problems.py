"""Synthetic sequence problems, generated with NumPy from a seed (no downloads).

Every function is pure: the same arguments (and ``seed``) give identical arrays. All
arrays are float32 unless stated otherwise. Shapes use named axes: ``b`` = batch
(samples), ``t`` = time steps, ``f`` = features. Arguments are validated before any work;
a bad one raises ``TypeError`` or ``ValueError`` naming the argument, what was expected
and what was given.

The dataset builders (`echo`, `adding_problem`, `copy_task`, `sine_forecast`) return a
`Split` carrying the MSE of a trivial baseline on the test split: a model worth keeping
must beat ``split.baseline_mse``. `moving_square` makes short videos for next-frame
prediction with the ConvLSTM layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

FRAMINGS = ("one_to_one", "many_to_one", "many_to_many")
PADDINGS = ("post", "pre")


def _int(fn: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{fn} expects {name} to be an int; got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{fn} expects {name} >= {minimum}; got {value}.")
    return int(value)


def _sizes(fn: str, n_train, n_test, seed) -> tuple[int, int, int]:
    return _int(fn, "n_train", n_train, 1), _int(fn, "n_test", n_test, 1), _int(fn, "seed", seed, 0)


def _mse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean((np.asarray(pred, np.float64) - target) ** 2))


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """Train/test arrays plus a trivial baseline to beat.

    ``baseline`` describes the trivial predictor in words; ``baseline_mse`` is its mean
    squared error on ``(x_test, y_test)``, averaged over every element of ``y_test``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    baseline_mse: float
    baseline: str


def _split(x, y, n_train, baseline_mse_fn, baseline: str) -> Split:
    x, y = x.astype(np.float32), y.astype(np.float32)
    xtr, xte, ytr, yte = x[:n_train], x[n_train:], y[:n_train], y[n_train:]
    return Split(xtr, ytr, xte, yte, baseline_mse_fn(xte, ytr, yte), baseline)


def echo_sequence(length: int) -> np.ndarray:
    """The ramp ``i / length`` for ``i = 0 .. length-1``: shape ``(t,)`` with ``t = length``.

    ``echo_sequence(5)`` is ``[0.0, 0.2, 0.4, 0.6, 0.8]``.
    """
    n = _int("echo_sequence", "length", length, 1)
    return (np.arange(n, dtype=np.float64) / n).astype(np.float32)


def frame(seq, framing: str) -> tuple[np.ndarray, np.ndarray]:
    """Frame a 1-D sequence ``(n,)`` as an echo problem ``(x, y)`` where y repeats x.

    - ``"one_to_one"``:   x ``(b=n, t=1, f=1)``, y ``(b=n, f=1)``
    - ``"many_to_one"``:  x ``(b=1, t=n, f=1)``, y ``(b=1, n)`` (all n values from one head)
    - ``"many_to_many"``: x ``(b=1, t=n, f=1)``, y ``(b=1, t=n, f=1)``
    """
    if not isinstance(framing, str) or framing not in FRAMINGS:
        raise ValueError(f"frame expects framing to be one of {FRAMINGS}; got {framing!r}.")
    try:
        arr = np.array(seq, dtype=np.float32)  # a copy: x never aliases the caller's seq
    except (TypeError, ValueError) as err:
        raise TypeError(f"frame expects seq to be numeric; got {type(seq).__name__}.") from err
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"frame expects seq to be 1-D and non-empty; got shape {arr.shape}.")
    n = arr.shape[0]
    shapes = {"one_to_one": ((n, 1, 1), (n, 1)), "many_to_one": ((1, n, 1), (1, n))}
    x_shape, y_shape = shapes.get(framing, ((1, n, 1), (1, n, 1)))
    return arr.reshape(x_shape), arr.reshape(y_shape).copy()


def _mean_baseline(xte, ytr, yte) -> float:
    return _mse(np.broadcast_to(ytr.mean(axis=0, dtype=np.float64), yte.shape), yte)


def echo(length: int, lag: int = 0, *, n_train=1000, n_test=200, seed=0) -> Split:
    """Echo the input ``lag`` steps later.

    x ``(b, t=length, f=1)`` uniform in [0, 1); y ``(b, t, f=1)`` with
    ``y[:, s] = x[:, s - lag]`` for ``s >= lag`` and 0 for ``s < lag`` (``0 <= lag < length``).
    Baseline: predict the per-step mean of the training targets, ``y_train.mean(axis=0)``.
    """
    t = _int("echo", "length", length, 1)
    lag = _int("echo", "lag", lag, 0)
    if lag >= t:
        raise ValueError(f"echo expects lag < length={t}; got lag={lag}.")
    n_train, n_test, seed = _sizes("echo", n_train, n_test, seed)
    x = np.random.default_rng(seed).random((n_train + n_test, t, 1))
    y = np.zeros_like(x)
    y[:, lag:] = x[:, : t - lag]
    return _split(x, y, n_train, _mean_baseline, "predict the per-step training-target mean")


def adding_problem(length: int, *, n_train=1000, n_test=200, seed=0) -> Split:
    """The adding problem (Hochreiter & Schmidhuber, 1997).

    x ``(b, t=length, f=2)``: channel 0 is noise uniform in [0, 1); channel 1 is a marker,
    1 at exactly two steps (one with ``s < length // 2``, one with ``s >= length // 2``)
    and 0 elsewhere. y ``(b, 1)`` is the sum of the two marked noise values.
    Baseline: predict the constant 1.0 (the expected sum); its MSE is about 1/6.
    """
    t = _int("adding_problem", "length", length, 2)
    n_train, n_test, seed = _sizes("adding_problem", n_train, n_test, seed)
    rng = np.random.default_rng(seed)
    n, half = n_train + n_test, t // 2
    x = np.zeros((n, t, 2))
    x[:, :, 0] = rng.random((n, t))
    rows = np.arange(n)
    first, second = rng.integers(0, half, n), rng.integers(half, t, n)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = (x[rows, first, 0] + x[rows, second, 0])[:, None]
    return _split(x, y, n_train, lambda xte, ytr, yte: _mse(1.0, yte), "predict the constant 1.0")


def copy_task(
    length: int, delay: int, alphabet: int = 8, *, n_train=1000, n_test=200, seed=0
) -> Split:
    """Copy a random symbol string after a delay.

    Symbols are drawn uniformly from ``{0, ..., alphabet-1}`` and one-hot encoded over
    ``alphabet`` channels; a blank step is the zero vector. With ``t = length + delay``:
    x ``(b, t, f=alphabet)`` holds the symbols at steps ``0..length-1`` then ``delay``
    blanks; y ``(b, t, f=alphabet)`` holds ``delay`` blanks then the same symbols, i.e.
    ``y[:, delay + i] = x[:, i]``. Baseline: predict the per-step mean of the training
    targets, ``y_train.mean(axis=0)``.
    """
    length = _int("copy_task", "length", length, 1)
    delay = _int("copy_task", "delay", delay, 1)
    k = _int("copy_task", "alphabet", alphabet, 2)
    n_train, n_test, seed = _sizes("copy_task", n_train, n_test, seed)
    n, t = n_train + n_test, length + delay
    onehot = np.eye(k)[np.random.default_rng(seed).integers(0, k, (n, length))]
    x, y = np.zeros((n, t, k)), np.zeros((n, t, k))
    x[:, :length], y[:, delay:] = onehot, onehot
    return _split(x, y, n_train, _mean_baseline, "predict the per-step training-target mean")


def series_to_supervised(series, n_in: int, n_out: int = 1, *, target_columns=None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows over a series ``(t,)`` or ``(t, f)`` (1-D means ``f = 1``).

    Args:
      series: ``(t,)`` or ``(t, f)`` numbers (a NumPy array, a list, a pandas DataFrame).
        A floating dtype is kept (float64 in, float64 out; float32, float16 likewise);
        integers and bools become float32.
      n_in: steps per input window (>= 1).
      n_out: steps per target window (>= 1), right after the input window.
      target_columns: which of the ``f`` columns are predicted: None (all, the default), one
        column or a sequence of them, each an int index into the last axis (negative counts
        from the end) or, for a DataFrame, a column name. The inputs keep every column.

    Returns:
      x ``(n, n_in, f)`` and y ``(n, n_out, k)`` with ``n = t - n_in - n_out + 1`` and ``k``
      target columns: ``x[i] = series[i : i + n_in]`` and
      ``y[i] = series[i + n_in : i + n_in + n_out][:, target_columns]``.

    Raises:
      ValueError: n_in or n_out < 1; series not 1-D or 2-D, or shorter than n_in + n_out;
        a target column out of range, unknown, repeated, or none given.
      TypeError: non-numeric series; a target column that is neither an int nor a name.
    """
    where = "series_to_supervised"
    n_in = _int(where, "n_in", n_in, 1)
    n_out = _int(where, "n_out", n_out, 1)
    names = list(getattr(series, "columns", ()))
    try:
        arr = np.asarray(series)
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{where} expects series to be numeric; got {type(series).__name__}."
        ) from err
    if arr.ndim not in (1, 2):
        raise ValueError(f"{where} expects series of shape (t,) or (t, f); got shape {arr.shape}.")
    arr = arr[:, None] if arr.ndim == 1 else arr
    n = arr.shape[0] - n_in - n_out + 1
    if n < 1:
        raise ValueError(
            f"{where} expects len(series) >= n_in + n_out = {n_in + n_out}; "
            f"got len(series)={arr.shape[0]} (n_in={n_in}, n_out={n_out})."
        )
    columns = _target_columns(target_columns, arr.shape[1], names, where)
    win = np.lib.stride_tricks.sliding_window_view(arr, n_in + n_out, axis=0)[:n]
    win = np.moveaxis(win, -1, 1)  # (n, n_in + n_out, f)
    return win[:, :n_in].copy(), win[:, n_in:][..., columns].copy()


def _target_columns(target_columns, f: int, names: list, where: str) -> list[int] | slice:
    """`target_columns` as indices into the f columns (slice(None) for None)."""
    if target_columns is None:
        return slice(None)
    chosen = [target_columns] if isinstance(target_columns, (str, int, np.integer)) else (
        list(target_columns) if isinstance(target_columns, (list, tuple, np.ndarray)) else None)
    if chosen is None:
        raise TypeError(f"{where} expects target_columns to be None, a column or a sequence of "
                        f"columns; got {type(target_columns).__name__}.")
    if not chosen:
        raise ValueError(f"{where} expects at least one target column; got none.")
    out = []
    for c in chosen:
        if isinstance(c, str):
            if c not in names:
                known = f"the DataFrame's columns {names}" if names else "no column names " \
                    "(series is not a DataFrame; use int indices)"
                raise ValueError(f"{where}: target column {c!r} is not among {known}.")
            c = names.index(c)
        elif isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"{where} expects target_columns as int indices or column names; "
                            f"got {c!r} ({type(c).__name__}).")
        elif not -f <= c < f:
            raise ValueError(f"{where} expects target column indices in [{-f}, {f}) for a "
                             f"series with f={f} columns; got {c}.")
        out.append(int(c) % f)
    if len(set(out)) != len(out):
        raise ValueError(f"{where} expects distinct target columns; got {list(chosen)}.")
    return out


def _sine_series(rng, count: int, n_steps: int, noise: float) -> np.ndarray:
    """``(count, n_steps)``: each row the mean of 2 or 3 random sines, plus Gaussian noise."""
    k = rng.integers(2, 4, (count, 1, 1))  # number of components per series
    freq = rng.uniform(0.01, 0.1, (count, 3, 1))  # cycles per step
    phase = rng.uniform(0.0, 2 * np.pi, (count, 3, 1))
    amp = rng.uniform(0.5, 1.0, (count, 3, 1)) * (np.arange(3)[None, :, None] < k)
    clean = (amp * np.sin(2 * np.pi * freq * np.arange(n_steps) + phase)).sum(1) / k[:, 0]
    return clean + noise * rng.standard_normal(clean.shape)


def sine_forecast(
    n_steps: int = 100,
    n_in: int = 20,
    n_out: int = 1,
    *,
    n_series: int = 16,
    noise: float = 0.1,
    n_train=1000,
    n_test=200,
    seed=0,
) -> Split:
    """Forecast noisy mixtures of 2-3 sines from a window of past values.

    Each series has ``n_steps`` steps: the mean of 2 or 3 sines with random frequency
    (0.01-0.1 cycles/step), phase and amplitude (0.5-1), plus Gaussian noise of std
    ``noise``. Windows come from `series_to_supervised`. Training windows are drawn
    without replacement from ``n_series`` series, test windows from ``n_series`` other
    series, so no test window overlaps a training one.
    x ``(b, t=n_in, f=1)``; y ``(b, n_out)`` (the next ``n_out`` values, for a Dense head).
    Baseline: persistence, i.e. repeat the last observed value ``x[:, -1, 0]``.
    """
    fn = "sine_forecast"
    n_steps, n_in = _int(fn, "n_steps", n_steps, 2), _int(fn, "n_in", n_in, 1)
    n_out, n_series = _int(fn, "n_out", n_out, 1), _int(fn, "n_series", n_series, 1)
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating, np.integer)):
        raise TypeError(f"{fn} expects noise to be a float; got {type(noise).__name__} {noise!r}.")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"{fn} expects noise to be finite and >= 0; got {noise!r}.")
    n_train, n_test, seed = _sizes(fn, n_train, n_test, seed)
    if n_steps < n_in + n_out:
        raise ValueError(
            f"{fn} expects n_steps >= n_in + n_out = {n_in + n_out}; got n_steps={n_steps}."
        )
    available = n_series * (n_steps - n_in - n_out + 1)
    for name, want in (("n_train", n_train), ("n_test", n_test)):
        if want > available:
            raise ValueError(
                f"{fn} expects {name} <= n_series * (n_steps - n_in - n_out + 1) = {available} "
                f"windows; got {name}={want}. Raise n_series or n_steps."
            )
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for want in (n_train, n_test):  # fresh series for each split
        series = _sine_series(rng, n_series, n_steps, float(noise)).T  # (t, f=n_series)
        x, y = series_to_supervised(series.astype(np.float32), n_in, n_out)  # float32 windows
        x, y = np.moveaxis(x, 2, 0).reshape(-1, n_in, 1), np.moveaxis(y, 2, 0).reshape(-1, n_out)
        pick = rng.choice(len(x), want, replace=False)
        xs.append(x[pick])
        ys.append(y[pick])
    persist = lambda xte, ytr, yte: _mse(np.broadcast_to(xte[:, -1, :], yte.shape), yte)
    x, y = np.concatenate(xs), np.concatenate(ys)
    return _split(x, y, n_train, persist, "repeat the last observed value (persistence)")


def pad_sequences(
    sequences: Sequence,
    maxlen: int | None = None,
    *,
    padding: str = "post",
    value: float = 0.0,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Pad variable-length sequences ``(t_i,)`` or ``(t_i, f)`` (same ``f``) to one array.

    Returns padded ``(b, t=maxlen, f)`` (1-D inputs give ``f = 1``) filled with ``value``
    off the sequences, and mask ``(b, t)`` bool, True at real steps. ``padding="post"``
    pads after each sequence, ``"pre"`` before it. ``maxlen=None`` uses the longest
    length; a sequence longer than ``maxlen`` is an error (nothing is truncated).
    """
    fn = "pad_sequences"
    if isinstance(sequences, (str, bytes)) or not isinstance(sequences, (Sequence, np.ndarray)):
        raise TypeError(
            f"{fn} expects sequences to be a list of arrays; got {type(sequences).__name__}."
        )
    if len(sequences) == 0:
        raise ValueError(f"{fn} expects at least one sequence; got sequences={sequences!r}.")
    if maxlen is not None:
        maxlen = _int(fn, "maxlen", maxlen, 1)
    if not isinstance(padding, str) or padding not in PADDINGS:
        raise ValueError(f"{fn} expects padding to be one of {PADDINGS}; got {padding!r}.")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{fn} expects value to be a number; got {type(value).__name__} {value!r}.")
    try:
        dtype = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{fn} expects dtype to be a NumPy dtype; got {dtype!r}.") from err
    seqs = [np.asarray(s) for s in sequences]
    for i, s in enumerate(seqs):
        if s.ndim not in (1, 2) or s.dtype.kind not in "biuf":
            raise ValueError(
                f"{fn} expects sequences[{i}] to be numeric of shape (t,) or (t, f); "
                f"got dtype {s.dtype} shape {s.shape}."
            )
    seqs = [s if s.ndim == 2 else s[:, None] for s in seqs]
    feats = sorted({s.shape[1] for s in seqs})
    if len(feats) > 1:
        raise ValueError(f"{fn} expects every sequence to have the same f; got f in {feats}.")
    lengths = [s.shape[0] for s in seqs]
    longest = max(lengths)
    maxlen = longest if maxlen is None else maxlen
    if longest > maxlen:
        i = lengths.index(longest)
        raise ValueError(
            f"{fn} expects every sequence length <= maxlen={maxlen}; got length {longest} at "
            f"sequences[{i}]. Pass maxlen=None or maxlen>={longest}, or cut the sequences first."
        )
    padded = np.full((len(seqs), maxlen, feats[0]), value, dtype=dtype)
    mask = np.zeros((len(seqs), maxlen), dtype=bool)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if padding == "post" else slice(maxlen - len(s), maxlen)
        padded[i, sl], mask[i, sl] = s, True
    return padded, mask


def moving_square(n: int = 256, frames: int = 10, size: int = 16, seed: int = 0, *,
                  side: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` videos of a white ``side`` x ``side`` square moving with a constant velocity,
    one pixel per frame along each axis (one of the 8 directions, drawn per video), on a
    black ``size`` x ``size`` frame; the start is drawn so the square stays whole in every
    frame (needs ``size - side >= frames - 1``).

    Returns ``(x, y)`` for next-frame prediction, each float32 ``(n, frames - 1, size, size,
    1)`` = (b, t, rows, cols, channels) with values 0 or 1: ``x = video[:, :-1]``, ``y =
    video[:, 1:]``. Persistence (predict ``x``) has MSE ``2 * moved / size**2`` per frame,
    where ``moved`` is the pixels the square leaves: ``side`` on an axis, ``2 side - 1``
    diagonally.
    """
    fn = "moving_square"
    n, frames, size = _int(fn, "n", n, 1), _int(fn, "frames", frames, 2), _int(fn, "size", size, 1)
    seed, side = _int(fn, "seed", seed, 0), _int(fn, "side", side, 1)
    room, travel = size - side, frames - 1
    if room < travel:
        raise ValueError(f"{fn} expects size - side >= frames - 1 (the square moves one pixel "
                         f"per frame and stays whole); got size={size}, side={side}, "
                         f"frames={frames}.")
    rng = np.random.default_rng(seed)
    directions = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1) if (a, b) != (0, 0)])
    v = directions[rng.integers(0, len(directions), n)]  # (n, 2): rows, cols per frame
    lo = np.where(v < 0, travel, 0)
    hi = np.where(v > 0, room - travel, room)
    start = lo + (rng.random((n, 2)) * (hi - lo + 1)).astype(np.int64)
    pos = start[:, None, :] + v[:, None, :] * np.arange(frames)[None, :, None]  # (n, frames, 2)
    pixels = np.arange(size)
    inside = (pixels >= pos[..., None]) & (pixels < pos[..., None] + side)  # (n, frames, 2, size)
    video = (inside[:, :, 0, :, None] & inside[:, :, 1, None, :]).astype(np.float32)
    return video[:, :-1, ..., None], video[:, 1:, ..., None]
