"""`jaxseq.models.Sequential`: no layers is a clear error; the mask reaches the layers that take
one while the output keeps its time axis, and is dropped after a 2-D output."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseq as js

B, T, F = 2, 4, 3
X = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)


class Recorder(nn.Module):
    """Passes x through; sows the mask it was given (an empty array for none)."""

    @nn.compact
    def __call__(self, x, *, mask=None):
        self.sow("intermediates", "mask", jnp.zeros((0,), bool) if mask is None else mask)
        return x


def _masks_seen(model, x, mask):
    # jitted: an eager init runs (and compiles) every LSTM operation one by one (~10 s)
    _, state = jax.jit(lambda x, mask: model.init_with_output(
        jax.random.key(0), x, mask=mask, mutable=["params", "intermediates"]))(x, mask)
    return {name: np.asarray(v["mask"][0]) for name, v in state["intermediates"].items()}


@pytest.mark.parametrize("layers", [(), []], ids=["tuple", "list"])
def test_sequential_without_layers_is_a_clear_error(layers):
    with pytest.raises(ValueError, match="Sequential expects at least one layer; got none"):
        js.Sequential(layers).init(jax.random.key(0), X)


def test_mask_is_passed_while_3d_and_dropped_after_a_2d_output():
    model = js.Sequential((Recorder(), js.LSTM(3, return_sequences=True), Recorder(),
                           js.LSTM(2), Recorder(), js.RepeatVector(T), Recorder()))
    seen = _masks_seen(model, X, MASK)
    assert sorted(seen) == ["recorder", "recorder_1", "recorder_2", "recorder_3"]
    np.testing.assert_array_equal(seen["recorder"], MASK)
    np.testing.assert_array_equal(seen["recorder_1"], MASK)  # (b, t, 3): still a time axis
    assert seen["recorder_2"].size == 0  # after LSTM(2): (b, 2), no time axis, no mask
    assert seen["recorder_3"].size == 0  # a new time axis (RepeatVector) gets no old mask
    # Without a mask, no layer gets one.
    assert all(v.size == 0 for v in _masks_seen(model, X, None).values())


def test_mask_reaches_the_recurrent_layer():
    """The Sequential's output with a mask is the LSTM's own masked output."""
    lstm = js.LSTM(3)
    model = js.Sequential((lstm,))
    params = model.init(jax.random.key(0), X)["params"]
    got = model.apply({"params": params}, X, mask=MASK)
    want = lstm.apply({"params": params["lstm"]}, X, mask=MASK)
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(got, model.apply({"params": params}, X))  # the mask mattered
