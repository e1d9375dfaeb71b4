"""The jaxtyping annotations are true: representative public calls run under jaxtyping's
runtime checker (beartype, installed with `jaxtyping.install_import_hook`), and a call whose
named axes disagree is caught by it. A subprocess: the hook must see jaxseq imported first."""

import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("jaxtyping")
pytest.importorskip("beartype")

CHECKED = r'''
import jaxtyping
# the annotated modules (flax's own dataclass fields, e.g. Dense's Protocol-typed promote_dtype,
# are not beartype-checkable, so layers.py stays outside the hook)
with jaxtyping.install_import_hook(["jaxseq.training.drivers", "jaxseq.training.predict",
                                    "jaxseq.evaluation.replicas", "jaxseq.recurrent"],
                                   "beartype.beartype"):
    import jaxseq as js
import jax, numpy as np
x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
model = js.models.many_to_many(units=3)
mask = np.ones((1, 5), bool)
state, history = js.fit(model, x, y, epochs=2, batch_size=1, verbose=0, mask=mask,
                        sample_weight=np.ones((1, 5), np.float32))
out = js.predict(model, state, x, mask=mask)
loss = js.evaluate(model, state, x, y)
states, _ = js.fit_replicas(model, x, y, seeds=2, epochs=2, batch_size=1)
scores = js.skill(model, states, x, y, n_boot=10)
layer = js.GRU(2, return_sequences=True)
params = layer.init(jax.random.PRNGKey(0), x)
layer.apply(params, x, mask=mask.astype(np.int32))
print("ok", out.shape)
try:  # x has 1 sample, y 2: the named "batch" axis disagrees
    js.fit(model, x, np.concatenate([y, y]), epochs=1, verbose=0)
except Exception as err:
    print("caught", type(err).__module__.split(".")[0], type(err).__name__)
'''


def test_public_calls_satisfy_their_jaxtyping_annotations():
    proc = subprocess.run([sys.executable, "-c", CHECKED], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    assert "ok (1, 5, 1)" in lines
    # the checker, not jaxseq's own contracts, caught the batch mismatch: annotations are live
    caught = [ln for ln in lines if ln.startswith("caught")]
    assert caught and ("jaxtyping" in caught[0] or "beartype" in caught[0]), caught


# The whole package under the hook, as a user's shape-checking tests turn it on: every
# annotation of jaxseq must accept what the implementation accepts (Keras-style optimizer
# names, nested lists, pathlib paths, NumPy arrays into layers) and still reject wrong types.
WHOLE_PACKAGE = r'''
import pathlib, tempfile
from jaxtyping import install_import_hook
with install_import_hook("jaxseq", "beartype.beartype"):
    import jaxseq as js
import jax, numpy as np
x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
xl, yl = np.asarray(x).tolist(), np.asarray(y).tolist()  # nested lists, as np.asarray takes
model = js.models.many_to_many(units=3)
state, history = js.fit(model, xl, yl, epochs=2, batch_size=1, verbose=0, optimizer="adam",
                        mask=np.ones((1, 5), bool), sample_weight=[1.0], seed=np.int64(3))
out = js.predict(model, state, xl)
loss = js.evaluate(model, state.params, x, y, metrics=["mae"])
states, _ = js.fit_replicas(model, x, y, seeds=np.arange(2), epochs=2, batch_size=1,
                            optimizer="sgd")
scores = js.skill(model, states, xl, yl, n_boot=10)
rng = np.random.default_rng(0)
cv = js.evaluation.cross_validate(js.models.many_to_one(5), rng.random((6, 5, 1), np.float32),
                                  rng.random((6, 5), np.float32), epochs=1, folds=2, seeds=(0,),
                                  optimizer="rmsprop")
d = pathlib.Path(tempfile.mkdtemp())
js.save_model(d / "m.jaxseq", model, state)
model2, variables2 = js.load_model(d / "m.jaxseq")
js.save_params(d / "p.msgpack", state.params)
params2 = js.load_params(d / "p.msgpack", like=state.params)
js.fit(model, x, y, epochs=2, batch_size=1, verbose=0, checkpoint_dir=d / "ck")
assert js.checkpointing.latest_epoch(d / "ck") == 2
key = jax.random.PRNGKey(0)
xs = np.ones((2, 4, 3), np.float32)
layers = [js.LSTM(2, return_state=True), js.GRU(2), js.SimpleRNN(2), js.MinGRU(2),
          js.MinLSTM(2), js.Bidirectional(js.LSTM(2)), js.TimeDistributed(js.Dense(2)),
          js.Dense(2), js.Masking(), js.Dropout(0.5, deterministic=True),
          js.ConvLSTM1D(2, 3, padding="same"), js.Sequential([js.LSTM(2), js.RepeatVector(3)])]
for layer in layers:  # NumPy inputs into every layer
    inp = np.ones((2, 4, 5, 3), np.float32) if isinstance(layer, js.ConvLSTM1D) else xs
    layer.apply(layer.init(key, inp), inp)
lstm = js.LSTM(2)
lstm.apply(lstm.init(key, xs), xs, mask=np.ones((2, 4), np.int32),
           initial_state=(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32)))
print("ok", np.shape(out), type(model2).__name__)
for bad in [dict(epochs="3"), dict(epochs=1, optimizer=3), dict(epochs=1, seed="0")]:
    try:
        js.fit(model, x, y, verbose=0, **bad)
        print("missed", sorted(bad.items()))
    except Exception as err:
        print("caught", type(err).__module__.split(".")[0], type(err).__name__)
'''


def test_whole_package_under_the_import_hook_accepts_the_documented_inputs():
    root = pathlib.Path(__file__).resolve().parents[1]  # import this checkout's jaxseq
    proc = subprocess.run([sys.executable, "-c", WHOLE_PACKAGE], capture_output=True,
                          text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    assert "ok (1, 5, 1) Sequential" in lines, proc.stdout
    caught = [ln.split()[1:] for ln in lines if ln.startswith(("caught", "missed"))]
    assert len(caught) == 3 and "missed" not in proc.stdout, proc.stdout
    # epochs="3": the checker itself refuses it (the hook is live); the others are refused by
    # the checker or by jaxseq's own TypeError naming the argument
    assert caught[0] == ["jaxtyping", "TypeCheckError"], caught
    assert all(c in (["jaxtyping", "TypeCheckError"], ["builtins", "TypeError"])
               for c in caught), caught
