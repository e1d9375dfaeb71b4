"""`js.Masking` beyond (batch, time, features), as Keras 3's `Masking`
(`keras/src/layers/core/masking.py`: the mask reduces over the last axis only): (b, t1, t2, f)
in front of `TimeDistributed(LSTM)` and video (b, t, rows, cols, channels) in front of
`ConvLSTM2D`, where a frame is masked when all its values equal mask_value.

Keras 3's own ConvLSTM2D cannot take the (b, t, rows, cols) mask Masking makes (its JAX scan
path fails to broadcast it), so the video reference is Keras' ConvLSTM2D run on each row's
real frames only: a masked frame leaves the state unchanged, so skipping it is the same."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tests_common import jit_apply, jit_init

import jaxseq as js  # noqa: E402
from jaxseq.interop import from_keras  # noqa: E402

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "jax", reason="needs KERAS_BACKEND=jax"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
]
L = keras.layers
MV = -1.0  # not zero, so that Keras' zeroing of masked positions shows


def _video():
    x = np.random.default_rng(0).normal(size=(4, 5, 6, 6, 2)).astype(np.float32)
    x[0, 2] = MV  # a masked frame in the middle
    x[1, :2] = MV  # leading masked frames
    x[2] = MV  # a fully masked row
    x[3, 1, 0, 0] = MV  # one masked pixel in a real frame (Keras zeroes it; the frame is real)
    x[3, 3, :, :, 0] = MV  # one channel at mask_value: nothing masked
    return x


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (4, 5, 6, 6, 2)])
def test_masking_equals_keras_on_rank_4_and_5(shape):
    x = _video() if len(shape) == 5 else np.random.default_rng(1).normal(size=shape).astype(
        np.float32)
    if len(shape) == 4:
        x[0, 1, 2] = MV
        x[1, 2] = MV
    km = L.Masking(mask_value=MV)
    with jax.numpy_rank_promotion("allow"):
        want_out, want_mask = np.asarray(km(x)), np.asarray(km.compute_mask(x))
    m = js.Masking(mask_value=MV)
    got_out = np.asarray(jit_apply(m, {}, x))
    got_mask = np.asarray(m.compute_mask(x))
    assert got_mask.shape == want_mask.shape == shape[:-1] and got_mask.dtype == bool
    np.testing.assert_array_equal(got_mask, want_mask)
    np.testing.assert_array_equal(got_out, want_out)
    assert got_out.dtype == np.float32


def _keras_convlstm(return_sequences):
    k = L.ConvLSTM2D(3, 3, padding="same", return_sequences=return_sequences)
    with jax.numpy_rank_promotion("allow"):
        k.build((None, None, 6, 6, 2))
        rng = np.random.default_rng(2)
        k.set_weights([rng.normal(scale=0.3, size=w.shape).astype(np.float32)
                       for w in k.get_weights()])
    return k


@functools.cache
def _keras_real_frames() -> tuple[np.ndarray, list[np.ndarray | None]]:
    """(frame flags (4, 5), per row Keras' ConvLSTM2D sequence output over its real frames
    only, None for a fully masked row): one Keras run serves both return_sequences cases (the
    last output is the last step of the sequence output, the same weights)."""
    x = _video()
    k = _keras_convlstm(True)
    with jax.numpy_rank_promotion("allow"):
        masked = np.asarray(L.Masking(mask_value=MV)(x))  # Keras' own zeroing
    frames = ~np.all(x == MV, axis=(2, 3, 4))  # a frame is real unless all its values are MV
    outs = []
    for row in range(4):
        real = np.flatnonzero(frames[row])
        with jax.numpy_rank_promotion("allow"):
            outs.append(np.asarray(k(masked[row:row + 1, real]))[0] if len(real) else None)
    return frames, outs


@pytest.mark.parametrize("return_sequences", [False, True])
def test_masking_then_conv_lstm_2d_skips_masked_frames_as_keras(return_sequences):
    x = _video()
    k = _keras_convlstm(return_sequences)
    frames, outs = _keras_real_frames()
    want = np.zeros((4, 5, 6, 6, 3) if return_sequences else (4, 6, 6, 3), np.float32)
    for row in range(4):
        real = np.flatnonzero(frames[row])
        out = outs[row]
        if out is None:
            continue  # fully masked: the initial state, zeros
        if not return_sequences:
            want[row] = out[-1]
            continue
        last = np.zeros((6, 6, 3), np.float32)  # a masked step repeats the previous output
        for t in range(5):
            if frames[row, t]:
                last = out[int(np.searchsorted(real, t))]
            want[row, t] = last
    model = js.Sequential((js.Masking(mask_value=MV),
                           js.ConvLSTM2D(3, 3, padding="same",
                                         return_sequences=return_sequences)))
    params = {"conv_lstm2d": from_keras(k)}
    assert jax.tree.map(np.shape, jit_init(model, jax.random.key(0), x)["params"]) == jax.tree.map(
        np.shape, params)
    got, mask = jax.jit(lambda p, x: model.apply({"params": p}, x, return_mask=True))(params, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if return_sequences:  # one flag per frame reaches the output (and the loss)
        np.testing.assert_array_equal(mask, frames)
    else:
        assert mask is None


def test_masking_then_time_distributed_lstm_equals_keras():
    x = np.random.default_rng(3).normal(size=(3, 4, 5, 2)).astype(np.float32)
    x[0, 1, 3:] = 0.0
    x[1, 2, :2] = 0.0
    x[2, 0] = 0.0
    klstm = L.LSTM(3)
    with jax.numpy_rank_promotion("allow"):  # Keras' own broadcasting
        kmodel = keras.Sequential([keras.Input((4, 5, 2)), L.Masking(),
                                   L.TimeDistributed(klstm)])
        rng = np.random.default_rng(4)
        kmodel.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                            for w in kmodel.get_weights()])
        want = np.asarray(kmodel(x))
        unmasked = np.asarray(kmodel.layers[-1](x))  # the same LSTM without the mask
    assert not np.allclose(want, unmasked, atol=1e-3)
    model = js.Sequential((js.Masking(), js.TimeDistributed(js.LSTM(3))))
    params = {"time_distributed": {"layer": from_keras(klstm)}}
    got = np.asarray(jit_apply(model, {"params": params}, x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"Masking expects x of shape \(batch, time, features\)"):
        js.Masking().apply({}, np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="Masking expects x with a floating dtype"):
        js.Masking().apply({}, np.zeros((2, 3, 4, 4, 1), np.int32))
    layer = js.ConvLSTM2D(2, 3, padding="same")
    x = np.zeros((2, 3, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match=r"\(batch, time, rows, cols\) = \(2, 3, 4, 4\); got "
                                         r"\(2, 3, 4\)"):
        layer.init(jax.random.key(0), x, mask=np.ones((2, 3, 4), bool))
    with pytest.raises(TypeError, match="mask"):
        layer.init(jax.random.key(0), x, mask=np.ones((2, 3, 4, 4), np.float32))
