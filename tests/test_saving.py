"""Whole-model files: save, load in a fresh process without the model code, predict bitwise
equal; every collection travels; foreign, corrupt and newer files are refused."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import serialization

import jaxseq as js
from jaxseq import saving

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, 3)).astype(np.float32)

LOAD = """
import sys
import numpy as np
import jaxseq as js
x = np.load(sys.argv[1])
for path in sys.argv[2:]:  # model files; each prediction saved beside its file
    model, variables = js.load_model(path)
    np.save(path + ".y.npy", np.asarray(js.predict(model, variables, x)))
"""


class _Normed(js.models.nn.Module):  # not a jaxseq layer: refused by save_model
    @js.models.nn.compact
    def __call__(self, x):
        return x


def _models():
    return {
        "tutorial": js.models.many_to_many(units=4),
        "stack": js.Sequential((js.Masking(), js.Bidirectional(js.GRU(3, return_sequences=True),
                                                               merge_mode="sum"),
                                js.LSTM(4, proj_size=2, activation="relu"), js.Dropout(0.1),
                                js.Dense(2, activation="softmax"))),
        "batchnorm": js.Sequential((js.TimeDistributed(js.models.nn.BatchNorm(
            use_running_average=True)), js.SimpleRNN(3), js.RepeatVector(2))),
        "stateful": js.Sequential((js.LSTM(3, stateful=True, return_sequences=True),
                                   js.TimeDistributed(js.Dense(1)))),
    }


def test_save_then_load_in_a_fresh_process_predicts_bitwise_equal(tmp_path):
    """Every model of `_models()`: saved, loaded here and in one fresh interpreter (no model
    code), predicting bitwise what the original predicts."""
    want, paths = {}, []
    for name, model in _models().items():
        variables = model.init(jax.random.PRNGKey(1), X)
        if name == "stateful":  # advance the kept states, so they must travel
            _, variables = js.predict(model, variables, X, return_variables=True)
        want[name] = np.asarray(js.predict(model, variables, X))
        path = tmp_path / f"{name}.jaxseq"
        js.save_model(path, model, variables)
        again, loaded = js.load_model(path)
        assert again == model, name  # the same architecture, field for field
        np.testing.assert_array_equal(js.predict(again, loaded, X), want[name], err_msg=name)
        paths.append(str(path))
    np.save(tmp_path / "x.npy", X)
    subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "x.npy"), *paths], check=True,
                   timeout=300)
    for name in want:
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.jaxseq.y.npy"), want[name],
                                      err_msg=name)


def test_refused_files_and_models(tmp_path):
    path = tmp_path / "m.jaxseq"
    model = js.models.one_to_one()
    js.save_model(path, model, model.init(jax.random.PRNGKey(0), X[:, :1, :1]))
    content = serialization.msgpack_restore(path.read_bytes())
    newer = tmp_path / "newer.jaxseq"
    newer.write_bytes(serialization.msgpack_serialize({**content, "version": saving.VERSION + 1}))
    with pytest.raises(ValueError, match=rf"format version {saving.VERSION + 1}; this jaxseq "
                                         rf"reads versions 1 to {saving.VERSION}"):
        js.load_model(newer)
    corrupt = tmp_path / "corrupt.jaxseq"
    corrupt.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a jaxseq model file"):
        js.load_model(corrupt)
    pickled = tmp_path / "pickled.jaxseq"
    pickled.write_bytes(b"\x80\x04\x95\x00\x00")
    with pytest.raises(ValueError, match="never unpickled"):
        js.load_model(pickled)
    with pytest.raises(TypeError, match=r"_Normed; model files hold jaxseq's layers \("):
        js.save_model(path, js.Sequential((_Normed(),)), {"params": {}})
    with pytest.raises(TypeError, match="cannot hold. Use Keras activation names"):
        js.save_model(path, js.Sequential((js.Dense(2, activation=lambda v: v),)), {})
