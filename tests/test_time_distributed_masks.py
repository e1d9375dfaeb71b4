"""TimeDistributed passes `mask[:, i]` to an inner layer that takes a mask, as Keras 3
(`keras/src/layers/rnn/time_distributed.py`, `step_function`): checked against Keras 3 (JAX
backend) with the same weights, for an LSTM over (batch, t1, t2, features) and a nested
TimeDistributed over (batch, t1, t2, t3, features)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tests_common import jit_apply, jit_init

import jaxseq as js  # noqa: E402

pytestmark = [
    pytest.mark.skipif(keras.backend.backend() != "jax", reason="needs KERAS_BACKEND=jax"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy"),
]
L = keras.layers
RNG = np.random.default_rng(0)


def _random_weights(klayer, shape):
    with jax.numpy_rank_promotion("allow"):
        klayer.build(shape)
        rng = np.random.default_rng(1)
        klayer.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32)
                            for w in klayer.get_weights()])


def _lstm_params(klayer):
    return dict(zip(("kernel", "recurrent_kernel", "bias"),
                    (np.asarray(w) for w in klayer.get_weights()), strict=True))


@pytest.mark.parametrize("return_sequences", [False, True])
def test_per_slice_mask_reaches_the_lstm_as_keras(return_sequences):
    x = RNG.normal(size=(3, 4, 5, 2)).astype(np.float32)
    mask = RNG.random((3, 4, 5)) > 0.35
    mask[0, 1] = False  # a fully masked slice: its initial state (zeros)
    mask[1, 2] = [0, 0, 1, 1, 1]  # left padding
    klstm = L.LSTM(3, return_sequences=return_sequences)
    ktd = L.TimeDistributed(klstm)
    _random_weights(ktd, x.shape)
    with jax.numpy_rank_promotion("allow"):
        want = np.asarray(ktd(x, mask=mask))
        unmasked = np.asarray(ktd(x))
    td = js.TimeDistributed(js.LSTM(3, return_sequences=return_sequences))
    params = {"layer": _lstm_params(klstm)}
    got = np.asarray(jax.jit(lambda p, x, m: td.apply({"params": p}, x, mask=m))(params, x, mask))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(want, unmasked, atol=1e-3)  # the mask changed Keras' result


def test_nested_time_distributed_gets_each_slices_mask_as_keras():
    x = RNG.normal(size=(2, 3, 4, 5, 2)).astype(np.float32)
    mask = RNG.random((2, 3, 4, 5)) > 0.3
    klstm = L.LSTM(3)
    ktd = L.TimeDistributed(L.TimeDistributed(klstm))
    _random_weights(ktd, x.shape)
    with jax.numpy_rank_promotion("allow"):
        want = np.asarray(ktd(x, mask=mask))
    td = js.TimeDistributed(js.TimeDistributed(js.LSTM(3)))
    params = {"layer": {"layer": _lstm_params(klstm)}}
    got = np.asarray(jit_apply(td, {"params": params}, x, mask=mask))
    assert got.shape == want.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a mask that does not lead x's shape is refused, naming what fits
    with pytest.raises(ValueError, match=r"TimeDistributed expects mask of shape"):
        td.apply({"params": params}, x, mask=mask[:, :, :2])


def test_sequential_passes_the_reduced_mask_after_a_nested_time_distributed():
    # (b, t1, t2, t3) -> TD(TD(LSTM)) -> (b, t1, t2, u): the mask that follows is (b, t1, t2),
    # a step real where any of its inner steps is; the next TimeDistributed(LSTM) gets its
    # slices' masks from it.
    x = RNG.normal(size=(2, 3, 4, 5, 2)).astype(np.float32)
    mask = RNG.random((2, 3, 4, 5)) > 0.5
    mask[0, 1, 2:] = False
    model = js.Sequential((js.TimeDistributed(js.TimeDistributed(js.LSTM(3))),
                           js.TimeDistributed(js.GRU(2))))
    params = jit_init(model, jax.random.key(0), x)["params"]
    got, out_mask = jit_apply(model, {"params": params}, x, mask=mask, return_mask=True)
    h = js.TimeDistributed(js.TimeDistributed(js.LSTM(3))).apply(
        {"params": params["time_distributed"]}, x, mask=mask)
    want = jit_apply(js.TimeDistributed(js.GRU(2)), {"params": params["time_distributed_1"]}, h,
                                               mask=mask.any(axis=-1))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out_mask, mask.any(axis=-1).any(axis=-1))
