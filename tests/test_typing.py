"""The jaxtyping annotations are true: representative public calls run under jaxtyping's
runtime checker (beartype, installed with `jaxtyping.install_import_hook`), and a call whose
named axes disagree is caught by it. A subprocess: the hook must see jaxseq imported first."""

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
                                    "jaxseq.replicas", "jaxseq.recurrent"], "beartype.beartype"):
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
