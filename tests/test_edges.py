"""The edges, where a user's files, a second process or an unusual argument meet the package:
one writer per checkpoint directory, files whose damage is detected, saves that fail without
losing the trained state, a program cache that never confuses two optimizers, and errors that
name the real cause.

Every run trains the tutorial's many-to-many model on its one echo sequence with one shared
optimizer object, so the runs share their compiled programs."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import jaxseq as js
from jaxseq import checkpointing, evaluation, saving
from jaxseq.training import compile as compile_mod

X, Y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")
MODEL = js.models.many_to_many()
OPT = optax.adam(0.01)
KW = dict(batch_size=1, optimizer=OPT, seed=3, verbose=0)


def fit(**kw):
    return js.fit(MODEL, X, Y, **{"epochs": 6, **KW, **kw})


def entries(d) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name != checkpointing.LOCK_NAME)


def assert_same(state_a, history_a, state_b, history_b):
    """Bitwise: parameters, optimizer state, step and losses."""
    for u, v in zip(jax.tree.leaves((state_a.params, state_a.opt_state)),
                    jax.tree.leaves((state_b.params, state_b.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert int(state_a.step) == int(state_b.step)
    np.testing.assert_array_equal(history_a.loss, history_b.loss)


@pytest.fixture(scope="module")
def reference():
    """{epochs: (state, history)} of uninterrupted runs without checkpoints."""
    return {n: fit(epochs=n) for n in (2, 6)}


# --- one writer per checkpoint directory -------------------------------------------------------

WRITER = """
import pathlib, sys, time
import jax, numpy as np, optax
import jaxseq as js

d, holding, go, out = map(pathlib.Path, sys.argv[1:])
x, y = js.problems.frame(js.problems.echo_sequence(5), "many_to_many")


class Hold(js.Callback):  # keeps the run (and its writer lock) alive until told to go on
    def on_epoch_end(self, epoch, logs):
        if epoch == 1:
            holding.write_text("holding")
            deadline = time.monotonic() + 240
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.02)


state, history = js.fit(js.models.many_to_many(), x, y, epochs=6, batch_size=1,
                        optimizer=optax.adam(0.01), seed=3, verbose=0, checkpoint_dir=d,
                        checkpoint_every=2, callbacks=[Hold()])
np.savez(out, loss=history.loss,
         **{f"leaf{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(state.params))})
"""


def test_a_second_writer_is_refused_and_the_first_run_stays_intact(tmp_path, reference):
    d, holding, go, out = (tmp_path / n for n in ("run", "holding", "go", "first.npz"))
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        first = subprocess.Popen([sys.executable, str(script), str(d), str(holding), str(go),
                                  str(out)], stdout=f, stderr=f,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        deadline = time.monotonic() + 240
        while not holding.exists():
            assert first.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run never reached its epoch 2"
            time.sleep(0.05)
        before = entries(d)

        class Seen(js.Callback):
            epochs: list = []

            def on_epoch_end(self, epoch, logs):
                self.epochs.append(epoch)

        for resume in (False, True):
            with pytest.raises(RuntimeError, match="is in use by another run") as err:
                fit(checkpoint_dir=d, checkpoint_every=2, resume=resume, callbacks=[Seen()])
            assert str(d) in str(err.value) and "another checkpoint_dir" in str(err.value)
        assert Seen.epochs == []  # refused before it trained
        assert entries(d) == before
    finally:
        go.write_text("go")
        first.wait(timeout=240)
    assert first.returncode == 0, log.read_text()[-3000:]
    assert entries(d) == ["2", "4", "6"]
    ref_state, ref_history = reference[6]
    with np.load(out) as got:  # the first run was not disturbed
        np.testing.assert_array_equal(got["loss"], ref_history.loss)
        for i, leaf in enumerate(jax.tree.leaves(ref_state.params)):
            np.testing.assert_array_equal(got[f"leaf{i}"], np.asarray(leaf))
    # Its lock went with its process; its checkpoints resume bitwise.
    assert_same(*fit(checkpoint_dir=d, checkpoint_every=2, resume=True), *reference[6])
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(d / "2", part / "2")
    assert_same(*fit(checkpoint_dir=part, checkpoint_every=2, resume=True), *reference[6])


def test_two_writers_in_one_process_are_refused_and_the_lock_is_released(tmp_path):
    d = tmp_path / "run"
    held = checkpointing.Checkpointer(d)
    try:
        with pytest.raises(RuntimeError, match="is in use by another run"):
            checkpointing.Checkpointer(d)
    finally:
        held.close()
    checkpointing.Checkpointer(d).close()  # free again


# --- checkpoint records: one save, validated ----------------------------------------------------


def _meta(d, epoch) -> dict:
    return json.loads((d / str(epoch) / "meta" / "metadata").read_text())


def _write_meta(d, epoch, record) -> None:
    (d / str(epoch) / "meta" / "metadata").write_text(json.dumps(record))


def test_a_checkpoint_whose_record_and_arrays_come_from_two_saves_is_refused(tmp_path,
                                                                               reference):
    a, b = tmp_path / "a", tmp_path / "b"
    fit(epochs=2, checkpoint_dir=a, checkpoint_every=2)
    fit(epochs=2, checkpoint_dir=b, checkpoint_every=2, seed=4)
    like = reference[2][0]
    assert checkpointing.restore(a, like).epoch == 2
    _write_meta(a, 2, {**_meta(b, 2), "settings": _meta(a, 2)["settings"]})
    with pytest.raises(ValueError, match="inconsistent: its arrays are not those its meta"):
        checkpointing.restore(a, like)
    with pytest.raises(ValueError, match="inconsistent"):
        fit(checkpoint_dir=a, checkpoint_every=2, resume=True)


@pytest.mark.parametrize("change", [
    {"step": None}, {"step": -1}, {"epoch": 3}, {"history": None}, {"stopped": "tired"}])
def test_a_hand_edited_checkpoint_record_is_refused_naming_the_field(tmp_path, reference,
                                                                     change):
    d = tmp_path / "run"
    fit(epochs=2, checkpoint_dir=d, checkpoint_every=2)
    record = {**_meta(d, 2), **change}
    record = {k: v for k, v in record.items() if v is not None or k == "stopped"}
    _write_meta(d, 2, record)
    field = next(iter(change))
    with pytest.raises(ValueError, match=f"invalid meta record: {field}"):
        checkpointing.restore(d, reference[2][0])


def _nan_at(step: int) -> optax.GradientTransformation:
    """SGD whose update at optimizer step `step` is NaN."""
    def init(params):
        return jnp.zeros((), jnp.int32)

    def update(grads, count, params=None):
        return jax.tree.map(lambda g: jnp.where(count == step, jnp.nan, -0.01 * g), grads), (
            count + 1)

    return optax.GradientTransformation(init, update)


def test_a_non_finite_stop_found_after_a_save_is_recorded_in_that_save(tmp_path, reference):
    d = tmp_path / "run"
    tx = _nan_at(3)
    with pytest.warns(RuntimeWarning, match="non-finite training at epoch index 3"):
        state, history = fit(checkpoint_dir=d, checkpoint_every=1, on_nan="stop", optimizer=tx)
    assert history.loss.shape == (3,) and int(state.step) == 3
    restored = checkpointing.restore(d, state)
    assert restored.epoch == 3 and restored.record["stopped"] == "non_finite"
    for u, v in zip(jax.tree.leaves(restored.state.params), jax.tree.leaves(state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    nan_state = state.replace(params=jax.tree.map(lambda a: a * jnp.nan, state.params))
    with pytest.raises(ValueError, match="state= holds non-finite parameters"):
        js.fit(MODEL, X, Y, epochs=1, state=nan_state, verbose=0)


# --- a failed save loses nothing ---------------------------------------------------------------


def test_a_save_that_fails_mid_run_raises_with_the_trained_state(tmp_path, reference,
                                                                  monkeypatch):
    """Disk full while saving epoch 2: orbax has begun its temporary directory, then fails."""
    import orbax.checkpoint as ocp

    save = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 2:
            (self.directory / f"{step}.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    d = tmp_path / "run"
    with pytest.raises(js.CheckpointSaveError) as err:
        fit(checkpoint_dir=d, checkpoint_every=1)
    e = err.value
    assert str(d) in str(e) and "no space left on device" in str(e)
    assert len(str(e)) < 600 and e.epoch == 2 and e.path == str(d)
    assert entries(d) == ["1"]  # no temporary directory left behind
    assert_same(e.state, e.history, *reference[2])


def test_a_checkpoint_directory_that_disappears_mid_run_keeps_the_trained_state(tmp_path,
                                                                                reference):
    d = tmp_path / "run"

    class Vanish(js.Callback):  # a real file-system failure: the directory becomes a file
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                shutil.rmtree(d)
                d.write_text("not a directory any more")

    with pytest.raises(js.CheckpointSaveError, match="not a directory") as err:
        fit(checkpoint_dir=d, checkpoint_every=1, callbacks=[Vanish()])
    assert str(d) in str(err.value) and err.value.epoch == 2
    assert_same(err.value.state, err.value.history, *reference[2])


# --- model and params files: integrity, validation, paths ---------------------------------------


def _flips(data: bytes):
    """Single-bit flips over the whole file: every byte of the first 200 (the header), then
    about 60 spread over the payload."""
    offsets = sorted(set(range(min(200, len(data)))) | set(
        np.linspace(0, len(data) - 1, 60).astype(int).tolist()))
    for i, off in enumerate(offsets):
        flipped = bytearray(data)
        flipped[off] ^= 1 << (i % 8)
        yield off, bytes(flipped)


@pytest.mark.parametrize("kind", ["params", "model"])
def test_every_single_bit_flip_of_a_file_is_refused(tmp_path, kind):
    variables = MODEL.init(jax.random.PRNGKey(0), X)
    path = tmp_path / "file"
    if kind == "params":
        js.save_params(path, variables["params"])
        load = js.load_params
    else:
        js.save_model(path, MODEL, variables, x=X)
        load = js.load_model
    data = path.read_bytes()
    bad = tmp_path / "flipped"
    for off, flipped in _flips(data):
        bad.write_bytes(flipped)
        with pytest.raises(ValueError, match="flipped"):
            load(bad)
            pytest.fail(f"a flip at byte {off} of {len(data)} loaded")


def test_version_1_files_are_still_read(tmp_path):
    variables = MODEL.init(jax.random.PRNGKey(0), X)
    flat = {k: np.asarray(v) for k, v in checkpointing.flatten(variables["params"]).items()}
    old = tmp_path / "old.msgpack"
    old.write_bytes(serialization.msgpack_serialize(
        {"format": checkpointing.PARAMS_FORMAT, "version": 1, "params": flat}))
    loaded = js.load_params(old, like=variables["params"])
    for u, v in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    model_file = tmp_path / "old.jaxseq"
    model_file.write_bytes(serialization.msgpack_serialize(
        {"format": saving.FORMAT, "version": 1,
         "architecture": json.dumps(saving._module(MODEL, "Sequential")),
         "variables": {k: np.asarray(v) for k, v in checkpointing.flatten(variables).items()}}))
    model, again = js.load_model(model_file)
    assert model == MODEL
    np.testing.assert_array_equal(js.predict(model, again, X), js.predict(MODEL, variables, X))


def _write_model(path, record: dict, variables, x=X):
    """A model file with a valid digest around whatever record it is given."""
    from jaxseq._trees import host_arrays, write_msgpack

    write_msgpack(str(path), saving.FORMAT, saving.VERSION, {
        "architecture": json.dumps(record), "variables": host_arrays(variables),
        "input": saving._input_spec(x)}, "test")


def test_load_model_validates_the_architecture_and_the_weights(tmp_path):
    variables = MODEL.init(jax.random.PRNGKey(0), X)
    record = saving._module(MODEL, "Sequential")
    lstm = record["fields"]["layers"]["__seq__"][0]
    cases = {
        "units is -1": {**lstm, "fields": {**lstm["fields"], "units": -1}},
        "units is '5'": {**lstm, "fields": {**lstm["fields"], "units": "5"}},
        "return_sequences is 1": {**lstm, "fields": {**lstm["fields"], "return_sequences": 1}},
        "unknown layer 'Conv3D'": {**lstm, "__module__": "Conv3D"},
        "LSTM has no field 'unitz'": {**lstm, "fields": {"unitz": 5}},
        "dropout is 1.5": {**lstm, "fields": {**lstm["fields"], "dropout": 1.5}},
    }
    for message, layer in cases.items():
        broken = {**record, "fields": {"layers": {"__seq__": [
            layer, *record["fields"]["layers"]["__seq__"][1:]]}}}
        _write_model(tmp_path / "m", broken, variables)
        with pytest.raises(ValueError, match="architecture record is invalid") as err:
            js.load_model(tmp_path / "m")
        assert message in str(err.value), str(err.value)
    other = js.models.many_to_many(units=4).init(jax.random.PRNGKey(0), X)
    js.save_model(tmp_path / "w", MODEL, other, x=X)  # weights of another model
    with pytest.raises(ValueError, match="does not match the model; first mismatch at "
                                         "params/lstm/"):
        js.load_model(tmp_path / "w")


def test_paths_are_checked_and_failed_writes_leave_nothing(tmp_path, monkeypatch):
    params = MODEL.init(jax.random.PRNGKey(0), X)["params"]
    for fn in (lambda p: js.save_params(p, params), lambda p: js.save_model(p, MODEL, params),
               js.load_params, js.load_model):
        for bad, kind in ((None, TypeError), (3, TypeError), (b"out.msgpack", TypeError),
                          ("", ValueError)):
            with pytest.raises(kind, match="path"):
                fn(bad)
    with pytest.raises(ValueError, match="is a directory"):
        js.save_params(tmp_path, params)
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        js.save_params(tmp_path / "missing" / "p.msgpack", params)
    monkeypatch.chdir(tmp_path)
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    for save in (lambda: js.save_params("p.msgpack", params),
                 lambda: js.save_model("m.jaxseq", MODEL, params)):
        with pytest.raises(OSError, match="could not write .*no space left on device"):
            save()
    monkeypatch.setattr(os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []  # no temporary file, nothing half written


# --- the program cache and optimizers -----------------------------------------------------------


def test_cache_keys_tell_namedtuple_twins_apart():
    adam = optax.adam(1e-3)
    plain = optax.GradientTransformation(adam.init, adam.update)
    twin = optax.GradientTransformationExtraArgs(adam.init, adam.update)
    assert plain == twin and hash(plain) == hash(twin)  # equal as tuples ...
    built = [compile_mod.cached("test-twins", tx, build=object) for tx in (plain, twin)]
    assert built[0] is not built[1]  # ... but not one program


def _plateau():
    """MultiSteps over Adam + reduce_on_plateau: the update needs the loss as `value=`."""
    inner = optax.chain(optax.adam(0.05), optax.contrib.reduce_on_plateau(patience=1,
                                                                          factor=0.1))
    return optax.MultiSteps(inner, every_k_schedule=2)


def test_optimizer_twins_each_train_as_alone():
    steps = _plateau()
    plain = steps.gradient_transformation()  # a GradientTransformation forwarding value=
    twin = optax.GradientTransformationExtraArgs(plain.init, plain.update)

    def losses(tx):
        return js.fit(MODEL, X, Y, epochs=30, batch_size=1, optimizer=tx, verbose=0)[1].loss

    alone = {}
    for name, tx in (("plain", plain), ("twin", twin)):
        compile_mod.clear_caches()
        alone[name] = losses(tx)
    compile_mod.clear_caches()
    together = {"plain": losses(plain), "twin": losses(twin)}
    reverse = {"twin": losses(twin), "plain": losses(plain)}
    for name in alone:
        np.testing.assert_array_equal(together[name], alone[name])
        np.testing.assert_array_equal(reverse[name], alone[name])
    np.testing.assert_array_equal(losses(steps), alone["plain"])  # the MultiSteps object itself
    # reduce_on_plateau acted: the loss stalls at the reduced rate, unlike Adam alone.
    assert not np.array_equal(alone["plain"], losses(optax.MultiSteps(
        optax.adam(0.05), every_k_schedule=2)))


# --- errors that name the real cause ------------------------------------------------------------


def test_predict_names_x_when_only_its_features_differ():
    variables = MODEL.init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match=r"x has 3 features .* trained for inputs with 1"):
        js.predict(MODEL, variables, np.ones((2, 5, 3), np.float32))
    other = js.models.many_to_many(units=4).init(jax.random.PRNGKey(0), X)
    with pytest.raises(ValueError, match="the params do not fit this model"):
        js.predict(MODEL, other, X)  # x is right, the params are another model's


def test_dense_and_dropout_check_their_arguments_as_keras_does():
    for make, kind, text in ((lambda: js.Dropout(-0.5), ValueError, "rate in"),
                             (lambda: js.Dropout(1.5), ValueError, "rate in"),
                             (lambda: js.Dropout("0.5"), TypeError, "rate"),
                             (lambda: js.Dense(0), ValueError, "units"),
                             (lambda: js.Dense(-3), ValueError, "units"),
                             (lambda: js.Dense(2.5), TypeError, "units")):
        with pytest.raises(kind, match=text):
            make()
    dense = js.Dense(2)
    params = dense.init(jax.random.PRNGKey(0), np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"Dense expects x with 2 features .* shape \(1, 3\)"):
        dense.apply(params, np.ones((1, 3), np.float32))
    assert js.Dropout(1.0).apply({}, np.ones(3), deterministic=True).shape == (3,)


def test_seeds_splits_meshes_and_compare_arguments_are_checked():
    for seeds, kind in ((None, TypeError), (True, TypeError), (2.0, TypeError), ("ab", TypeError),
                        (10**20, ValueError), (2**31 - 1, ValueError), ([1, 1], ValueError),
                        (range(2**31), ValueError)):
        with pytest.raises(kind, match="seeds"):
            js.fit_replicas(MODEL, X, Y, seeds=seeds, epochs=1)
    x4 = np.ones((4, 5, 1), np.float32)
    with pytest.raises(ValueError, match="cross_validate expects a 1-D jax.sharding.Mesh"):
        evaluation.cross_validate(MODEL, x4, x4, epochs=1, mesh=3,
                                  splitter=[([0, 1], [2, 3])])
    with pytest.raises(ValueError, match="split 0 of splitter must be a \\(train, test\\) pair"):
        evaluation.cross_validate(MODEL, x4, x4, epochs=1, splitter=[([0, 1, 2],)])
    for kw, kind, name in ((dict(scores_a=["a", "b"]), TypeError, "scores_a"),
                           (dict(alpha=None), TypeError, "alpha"),
                           (dict(n_boot=1.5), TypeError, "n_boot"),
                           (dict(seed=-1), TypeError, "seed")):
        args = {"scores_a": [1.0, 2.0, 3.0], "scores_b": [1.5, 2.5, 3.5], **kw}
        with pytest.raises(kind, match=name):
            evaluation.compare(**args)


def test_list_inputs_and_list_layers_behave_as_arrays_and_tuples():
    layer = js.TimeDistributed(js.LSTM(2))
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 3, 2) / 12
    params = layer.init(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(layer.apply(params, x.tolist()), layer.apply(params, x))
    listed = js.Sequential([js.LSTM(5, return_sequences=True), js.TimeDistributed(js.Dense(1))])
    assert isinstance(listed.layers, tuple) and listed == MODEL and hash(listed) == hash(MODEL)
    fit(epochs=1)
    compiled = compile_mod.cache_len()
    js.fit(js.Sequential(list(listed.layers)), X, Y, epochs=1, **KW)
    assert compile_mod.cache_len() == compiled  # an equal list-built model compiles nothing
