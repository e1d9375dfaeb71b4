"""Checkpoints: exact resume (after SIGKILL too), atomic saves, loud mismatches, no pickle.

"Exact" means bitwise: the resumed run's parameters, optimizer state, step and per-epoch
history equal those of the run that was never interrupted, on this machine. Every in-process
run here uses the same model, optimizer and chunk length, so they share one compiled program.
"""

import inspect
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxseq as js
from jaxseq import checkpointing, training


def build():
    """The run under test: an LSTM with dropout (so the dropout keys matter), shuffled mini-batches
    with a partial last batch, validation data. Its source is also the kill test's script."""
    import flax.linen as nn
    import numpy as np
    import optax

    import jaxseq as js

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 4, 1)).astype(np.float32)
    y = rng.normal(size=(12, 1)).astype(np.float32)
    model = js.Sequential((js.LSTM(3, dropout=0.25), nn.Dense(1)))
    kw = dict(batch_size=5, optimizer=optax.adam(1e-2), seed=3, verbose=0,
              validation_data=(x[:4], y[:4]))
    return model, x, y, kw


MODEL, X, Y, KW = build()
EPOCHS = 8


def fit(**kw):
    return js.fit(MODEL, X, Y, **{"epochs": EPOCHS, "epochs_per_chunk": 2, **KW, **kw})


def entries(d) -> list[str]:
    """The names in a checkpoint directory, less its writer lock file."""
    return sorted(p.name for p in d.iterdir() if p.name != checkpointing.LOCK_NAME)


def leaves(state) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves((state.params, state.opt_state))]


def assert_same_run(a, ha, b, hb):
    """Bitwise: parameters, optimizer state, step, and every per-epoch log."""
    for u, v in zip(leaves(a), leaves(b), strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape
        np.testing.assert_array_equal(u, v)
    assert int(a.step) == int(b.step)
    assert ha.history.keys() == hb.history.keys()
    for key in ha.history:
        np.testing.assert_array_equal(ha.history[key], hb.history[key])


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted run, with no checkpoints at all."""
    return fit()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, reference):
    """The same run, checkpointed after epochs 2, 4, 6 and 8."""
    d = tmp_path_factory.mktemp("full") / "run"
    state, history = fit(checkpoint_dir=d, checkpoint_every=2, keep=None)
    return d, state, history


def test_checkpointing_does_not_change_the_run_and_saves_the_whole_state(reference, full_run):
    d, state, history = full_run
    assert_same_run(state, history, *reference)
    assert entries(d) == ["2", "4", "6", "8"]
    saved = checkpointing.restore(d, state, epoch=4)
    assert saved.epoch == 4 and int(saved.state.step) == 4 * 3  # 3 batches of 5, 5, 2
    np.testing.assert_array_equal(saved.history.loss, history.loss[:4])
    np.testing.assert_array_equal(saved.history.val_loss, history.val_loss[:4])
    _, key = training.split_seed(KW["seed"])  # the PRNG state of data order and dropout
    np.testing.assert_array_equal(saved.key, key)
    assert saved.record["settings"] == dict(
        seed=3, batch_size=5, n_samples=12, shuffle=True, validation=True, loss="mse",
        logs=["loss", "val_loss"], early_stopping=None)
    assert saved.record["stopped"] is None and saved.early_stopping == {}
    latest = checkpointing.restore(d, state)
    assert latest.epoch == 8
    for u, v in zip(leaves(latest.state), leaves(state), strict=True):
        np.testing.assert_array_equal(u, v)


def test_resume_at_every_checkpoint_boundary_gives_the_uninterrupted_result(
    tmp_path, reference, full_run
):
    src = full_run[0]
    for boundary in (0, 2, 4, 6, 8):
        d = tmp_path / f"until{boundary}"
        d.mkdir()
        for epoch in range(2, boundary + 1, 2):  # a run that died right after `boundary`
            shutil.copytree(src / str(epoch), d / str(epoch))
        assert checkpointing.latest_epoch(d) == (boundary or None)
        state, history = fit(checkpoint_dir=d, checkpoint_every=2, resume=True, keep=None)
        assert_same_run(state, history, *reference)
        assert sorted(map(int, entries(d))) == [2, 4, 6, 8]


class Crash(BaseException):
    """A simulated crash (not an Exception, so nothing on the way can swallow it)."""


def test_an_incomplete_save_is_ignored_in_favour_of_the_last_complete_one(
    tmp_path, monkeypatch, reference
):
    from orbax.checkpoint._src.path import atomicity

    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def crash_before_committing_6(self, *args, **kwargs):
        if self.get_final().name == "6":
            raise Crash("power cut between write and commit")
        return await commit(self, *args, **kwargs)

    d = tmp_path / "run"
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize",
                        crash_before_committing_6)
    with pytest.raises(Crash):
        fit(checkpoint_dir=d, checkpoint_every=2)
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", commit)
    assert entries(d) == ["2", "4", "6.orbax-checkpoint-tmp"]
    assert any((d / "6.orbax-checkpoint-tmp" / "state").iterdir())  # written, not committed
    assert checkpointing.latest_epoch(d) == 4
    assert checkpointing.restore(d, reference[0]).epoch == 4
    state, history = fit(checkpoint_dir=d, checkpoint_every=2, resume=True)
    assert_same_run(state, history, *reference)
    assert entries(d) == ["4", "6", "8"]  # keep=3 by default


def test_restoring_into_a_different_model_names_the_path_and_both_shapes(
    tmp_path, full_run
):
    d, state, _ = full_run
    wider = js.Sequential((js.LSTM(4, dropout=0.25), nn.Dense(1)))
    message = (r"first mismatch at params/dense/kernel: the file has shape \(3, 1\) float32, "
               r"the model has shape \(4, 1\) float32 \(\d+ more mismatch\(es\)\)\. Nothing was "
               r"restored")
    with pytest.raises(ValueError, match=message):
        js.fit(wider, X, Y, epochs=EPOCHS, checkpoint_dir=d, resume=True, **KW)

    deeper = js.Sequential((js.LSTM(3, dropout=0.25), nn.Dense(1), nn.Dense(1)))
    like = jax.eval_shape(lambda: training.create_train_state(deeper, KW["optimizer"], X,
                                                      jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match=r"first mismatch at params/dense_1/bias: the model has "
                                         r"shape \(1,\) float32, the file has no such entry"):
        checkpointing.restore(d, like)

    shallow = js.Sequential((js.LSTM(3, dropout=0.25),))
    like = jax.eval_shape(lambda: training.create_train_state(shallow, KW["optimizer"], X,
                                                      jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match=r"first mismatch at params/dense/bias: the file has "
                                         r"shape \(1,\) float32, the model has no such entry"):
        checkpointing.restore(d, like)

    path = tmp_path / "weights.msgpack"
    checkpointing.save_params(path, state.params)
    with pytest.raises(ValueError, match=r"load_params\(.*first mismatch at dense/kernel: the "
                                         r"file has shape \(3, 1\) float32, the model has "
                                         r"shape \(4, 1\) float32 \(3 more"):
        checkpointing.load_params(path, like=jax.eval_shape(
            lambda: wider.init(jax.random.PRNGKey(0), X[:1])["params"]))


def test_save_and_load_params_round_trip_exactly(tmp_path, reference):
    params = reference[0].params
    path = tmp_path / "weights.msgpack"
    js.save_params(path, params)
    loaded = js.load_params(path, like=params)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for u, v in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)
    nested = js.load_params(path)  # without `like`: nested dicts
    np.testing.assert_array_equal(nested["lstm"]["kernel"], params["lstm"]["kernel"])
    np.testing.assert_array_equal(js.predict(MODEL, loaded, X), js.predict(MODEL, params, X))
    assert not any(p.name != "weights.msgpack" for p in tmp_path.iterdir())  # no temp left


class Payload:
    """Unpickling this creates the sentinel file: the side effect that must never happen."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


# orbax closes its event loop while tensorstore still reports a failed read of a crafted file
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pickle_payload_is_rejected_by_every_loader_and_never_runs(tmp_path, full_run):
    d, state, _ = full_run
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps(Payload(sentinel))
    pickle.loads(payload)  # the payload works: unpickling it does create the file ...
    assert sentinel.exists()
    sentinel.unlink()  # ... so from here on, its existence would mean something unpickled it

    weights = tmp_path / "weights.msgpack"
    weights.write_bytes(payload)
    for load in (lambda: js.load_params(weights),
                 lambda: js.load_params(weights, like=state.params)):
        with pytest.raises(ValueError, match=r"is not a jaxseq params file .*never unpickled"):
            load()

    loaders = {
        "restore": lambda c: checkpointing.restore(c, state).state,
        "fit(resume=True)": lambda c: fit(checkpoint_dir=c, checkpoint_every=2, resume=True,
                                          keep=None)[0],
    }
    src = d / "8"
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    rejected = set()
    for i, rel in enumerate(files):
        c = tmp_path / f"crafted{i}"
        shutil.copytree(d, c)
        (c / "8" / rel).write_bytes(payload)
        for name, load in loaders.items():
            try:
                got = load(c)
            except ValueError as err:
                assert "unreadable or corrupt" in str(err) or "not a jaxseq" in str(err), err
                rejected.add(str(rel))
            else:  # a file this loader does not read (orbax keeps spare copies): no effect
                for u, v in zip(leaves(got), leaves(state), strict=True):
                    np.testing.assert_array_equal(u, v)
            assert not sentinel.exists(), f"{name} ran a pickle payload placed at {rel}"
    # every file that carries the checkpoint's content is among the rejected ones
    assert {"meta/metadata", "state/_METADATA", "state/manifest.ocdbt"} <= rejected
    assert any(r.startswith("state/d/") for r in rejected)
    assert not sentinel.exists()


def test_save_and_load_paths_never_call_pickle(tmp_path, monkeypatch, reference):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was called in a save/load path")

    for name in ("dump", "dumps", "load", "loads", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    d = tmp_path / "run"
    fit(epochs=4, checkpoint_dir=d, checkpoint_every=2)
    state, history = fit(checkpoint_dir=d, checkpoint_every=2, resume=True)
    checkpointing.restore(d, state)
    js.save_params(tmp_path / "w.msgpack", state.params)
    js.load_params(tmp_path / "w.msgpack", like=state.params)
    assert_same_run(state, history, *reference)


def test_checkpoint_contracts(tmp_path, full_run):
    d, state, _ = full_run
    with pytest.raises(ValueError, match=r"already holds checkpoints \(the latest after 8 epochs"
                                         r"\)\. Pass resume=True"):
        fit(checkpoint_dir=d)
    with pytest.raises(ValueError, match=r"written with seed=3, but fit was called with seed=4"):
        fit(checkpoint_dir=d, resume=True, seed=4)
    with pytest.raises(ValueError, match=r"written with batch_size=5, but fit was called with "
                                         r"batch_size=4"):
        fit(checkpoint_dir=d, resume=True, batch_size=4)
    with pytest.raises(ValueError, match=r"resume=True needs checkpoint_dir"):
        fit(resume=True)
    with pytest.raises(ValueError, match=r"checkpoint_every >= 1; got 0"):
        fit(checkpoint_dir=tmp_path / "x", checkpoint_every=0)
    with pytest.raises(FileNotFoundError, match=r"No checkpoint directory"):
        checkpointing.restore(tmp_path / "missing", state)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No complete checkpoint in"):
        checkpointing.restore(tmp_path / "empty", state)
    with pytest.raises(FileNotFoundError, match=r"for epoch 5 .* there are \[2, 4, 6, 8\]"):
        checkpointing.restore(d, state, epoch=5)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match=r"is a file, not a checkpoint directory"):
        checkpointing.restore(tmp_path / "file", state)
    assert checkpointing.latest_epoch(tmp_path / "missing") is None
    kept = tmp_path / "kept"
    fit(checkpoint_dir=kept, checkpoint_every=2, keep=2)
    assert entries(kept) == ["6", "8"]


# --- the kill test --------------------------------------------------------------------------

SCRIPT = """
import asyncio
import sys

import jax
import numpy as np

import jaxseq as js
from jaxseq import checkpointing

{build}

def main(mode, directory, out):
    if mode == "kill":  # widen the window between a save's write and its commit
        from orbax.checkpoint._src.path import atomicity

        commit = atomicity.AtomicRenameTemporaryPath.finalize

        async def slow_commit(self, *args, **kwargs):
            await asyncio.sleep(0.5)
            return await commit(self, *args, **kwargs)

        atomicity.AtomicRenameTemporaryPath.finalize = slow_commit
    model, x, y, kw = build()
    start = checkpointing.latest_epoch(directory) or 0
    state, history = js.fit(model, x, y, epochs={epochs}, checkpoint_dir=directory,
                            checkpoint_every=1, resume=True, **kw)
    arrays = {{f"leaf{{i}}": np.asarray(a)
              for i, a in enumerate(jax.tree.leaves((state.params, state.opt_state)))}}
    np.savez(out, start=start, step=int(state.step), loss=history.loss,
             val_loss=history.val_loss, **arrays)


main(*sys.argv[1:])
"""


def _wait_for_a_save_in_progress(proc, d, log, timeout=180.0):
    deadline = time.monotonic() + timeout
    while True:
        names = os.listdir(d) if d.exists() else []
        if any(n.isdigit() for n in names) and any(".orbax-checkpoint-tmp" in n for n in names):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed:\n"
                        f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def test_a_run_killed_during_a_save_resumes_bitwise_equal_in_a_new_process(tmp_path, reference):
    """SIGKILL while a save is half done; a new process resumes; the result equals `reference`,
    which ran here without checkpoints and with another chunk length (2 epochs, the child's
    chunks are 1 epoch long, cut at every checkpoint)."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(build=textwrap.dedent(inspect.getsource(build)),
                                    epochs=EPOCHS))
    d, log = tmp_path / "run", tmp_path / "log.txt"
    # The two processes share JAX's persistent compilation cache: the resumed process loads the
    # programs the killed one compiled (the same executables, so the same bits) and starts fast.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jit"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), "kill", str(d),
                                 str(tmp_path / "killed.npz")], stdout=out, stderr=out, env=env)
        try:
            _wait_for_a_save_in_progress(proc, d, log)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    names = os.listdir(d)
    assert any(".orbax-checkpoint-tmp" in n for n in names), names  # killed mid-save
    killed_at = checkpointing.latest_epoch(d)
    assert killed_at is not None and 1 <= killed_at < EPOCHS

    with open(log, "a") as out:  # resume in a fresh process
        proc = subprocess.run([sys.executable, str(script), "resume", str(d),
                               str(tmp_path / "resumed.npz")], stdout=out, stderr=out, env=env,
                              timeout=300)
    assert proc.returncode == 0, log.read_text()[-3000:]
    ref, href = reference
    with np.load(tmp_path / "resumed.npz", allow_pickle=False) as got:
        assert int(got["start"]) == killed_at  # it did resume, from the last complete save
        assert int(got["step"]) == int(ref.step)
        np.testing.assert_array_equal(got["loss"], href.loss)
        np.testing.assert_array_equal(got["val_loss"], href.val_loss)
        ref_leaves = leaves(ref)
        assert len([k for k in got.files if k.startswith("leaf")]) == len(ref_leaves)
        for i, want in enumerate(ref_leaves):
            assert got[f"leaf{i}"].dtype == want.dtype
            np.testing.assert_array_equal(got[f"leaf{i}"], want)
