"""`jaxseq.summary` / `summary_rows`: the Keras-style table, its output shapes and parameter
counts checked against the same architecture built in Keras 3 (`count_params()`,
`layer.output.shape`)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jaxseq as js  # noqa: E402

B, T, F = 2, 5, 3
X = jax.ShapeDtypeStruct((B, T, F), jnp.float32)
L = keras.layers
CHEAP = dict(kernel_initializer="zeros", recurrent_initializer="zeros")  # fast to build


def _keras_rows(layers) -> list[tuple[str, int]]:
    """[(output shape as summary prints it, count_params())] of a built Keras Sequential."""
    with jax.numpy_rank_promotion("allow"):  # Keras broadcasts by rank promotion
        km = keras.Sequential([keras.Input((T, F)), *layers])
    out = []
    for layer in km.layers:
        shapes = layer.output if isinstance(layer.output, list) else [layer.output]
        text = [f"({', '.join(str(d) for d in s.shape)})" for s in shapes]
        out.append((text[0] if len(text) == 1 else "[" + ", ".join(text) + "]",
                    layer.count_params()))
    return out


def test_sequential_rows_equal_keras():
    model = js.Sequential((js.Bidirectional(js.LSTM(4, return_sequences=True)),
                           js.GRU(3), nn.Dense(2)))
    want = _keras_rows([L.Bidirectional(L.LSTM(4, return_sequences=True, **CHEAP)),
                        L.GRU(3, **CHEAP), L.Dense(2)])
    rows, total = js.summary_rows(model, X)
    assert [name for name, _, _ in rows] == ["bidirectional", "gru", "dense"]
    assert [(shape, count) for _, shape, count in rows] == want
    assert total == sum(count for _, count in want)
    # A real input gives the same rows as its ShapeDtypeStruct.
    assert js.summary_rows(model, np.zeros((B, T, F), np.float32)) == (rows, total)

    text = js.summary(model, X).splitlines()
    assert text[0] == 'Model: "sequential"'
    assert text[2].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#"]
    body = [line.split("  ") for line in text[4:7]]
    body = [[c.strip() for c in line if c.strip()] for line in body]
    assert body == [["bidirectional (Bidirectional)", want[0][0], f"{want[0][1]:,}"],
                    ["gru (GRU)", want[1][0], f"{want[1][1]:,}"],
                    ["dense (Dense)", want[2][0], f"{want[2][1]:,}"]]
    assert f"Total params: {total:,}" in text and f"Trainable params: {total:,}" in text


def test_single_layer_is_one_row_of_its_own_type():
    layer = js.LSTM(4, return_state=True)
    (want,) = _keras_rows([L.LSTM(4, return_state=True, **CHEAP)])
    rows, total = js.summary_rows(layer, X)
    assert rows == [("", want[0], want[1])] and total == want[1]
    assert want[0] == "[(None, 4), (None, 4), (None, 4)]"  # output, h, c
    text = js.summary(layer, X).splitlines()
    assert text[0] == 'Model: "lstm"'
    assert text[4].split()[0] == "LSTM"


def test_bidirectional_alone_lists_its_directions_in_call_order():
    rows, total = js.summary_rows(js.Bidirectional(js.GRU(4), merge_mode=None), X)
    ((_, gru_count),) = _keras_rows([L.GRU(4, **CHEAP)])
    assert rows == [("forward_layer", "(None, 4)", gru_count),
                    ("backward_layer", "(None, 4)", gru_count)]
    assert total == 2 * gru_count
    assert "forward_layer (GRU)" in js.summary(js.Bidirectional(js.GRU(4)), X)


class _Custom(nn.Module):
    """A non-Sequential module: children named by hand, called in an order that is not
    alphabetical."""

    @nn.compact
    def __call__(self, x):
        h = js.LSTM(4, return_sequences=True, name="seq")(x)
        h = js.GRU(3, name="enc")(h)
        return nn.Dense(2, name="head")(h)


def test_non_sequential_module_rows_and_types():
    want = _keras_rows([L.LSTM(4, return_sequences=True, **CHEAP), L.GRU(3, **CHEAP),
                        L.Dense(2)])
    rows, total = js.summary_rows(_Custom(), X)
    assert [(n, s, c) for n, s, c in rows] == [
        (name, shape, count) for name, (shape, count) in zip(("seq", "enc", "head"), want,
                                                             strict=True)]
    assert total == sum(c for _, c in want)
    text = js.summary(_Custom(), X)
    for name, cls in (("seq", "LSTM"), ("enc", "GRU"), ("head", "Dense")):
        assert f"{name} ({cls})" in text


def test_summary_needs_a_batch_axis():
    with pytest.raises(ValueError, match=r"summary expects x with a batch axis; got shape \(\)"):
        js.summary_rows(nn.Dense(2), jax.ShapeDtypeStruct((), jnp.float32))
