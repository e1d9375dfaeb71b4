"""Checkpoints with exact resume, and weight files for sharing (orbax, msgpack; no pickle).

Training checkpoints: `fit(..., checkpoint_dir=d, checkpoint_every=n, keep=k)` saves the whole
training state after every n-th epoch and when training ends (completed, stopped early, or
stopped by a non-finite epoch: then the last finite state), keeping the newest k;
`fit(..., resume=True)` continues from the latest complete checkpoint (or starts fresh in an
empty directory, so one command serves the first launch and every relaunch). The resumed run is
bitwise equal, on the same machine, to the run that was never interrupted: same parameters,
optimizer state, step and per-epoch history, because every epoch is the same compiled function
of (state, key) wherever the chunks are cut. A run that already stopped (early stopping) resumes
as stopped. Host-side callbacks keep no state in checkpoints.
`restore(d, like)` reads a checkpoint without training; `latest_epoch(d)` names the newest.

A checkpoint is one orbax step directory named by the number of epochs completed, `d/<epoch>/`:

- `state/`: arrays (orbax `StandardSave`, tensorstore/OCDBT): `params/...`, `opt_state/...`,
  `model_state/...` (the model's other collections), `key` (the training PRNG key), and the
  loop's compiled early-stopping state `early_stopping/...` (settings, best value, wait, best
  parameters). Under `fit_replicas` every array has a leading replica axis.
  The tree is stored flat, keyed by path strings (`params/lstm/kernel`, `opt_state/0/mu/...`).
- `meta/`: JSON (orbax `JsonSave`): format and version, `epoch`, the arrays' `digest`,
  optimizer `step`, the per-epoch `history`, why training `stopped` (None, "early_stopping",
  "non_finite"), and the `settings` that exact resume depends on (seed, effective batch size,
  number of samples, shuffle, validation, loss name, early-stopping rule). Resuming with
  other settings raises.

Saves are synchronous and atomic (orbax writes `d/<epoch>.orbax-checkpoint-tmp`, then renames
it): a process killed mid-save leaves a temporary directory that is never restored. A save that
fails (disk full, directory gone) removes its temporary directory and stops `fit` with a
`CheckpointSaveError` that carries the state and history trained so far. A directory has one
writer at a time: `fit` holds an OS file lock (`filelock`, on `d/.jaxseq-writer.lock`) while it
trains, so a second run on the same directory is refused before it trains; the OS releases the
lock when the process ends, killed or not. The meta record holds the SHA-256 digest of the
arrays it was saved with, so a restore proves that record and arrays come from one save.
Restoring checks the record's fields and the tree against the model's before reading data: a
mismatch raises a ValueError naming the first mismatching path and both shapes; a corrupt,
inconsistent or foreign checkpoint raises ValueError.

Weights for sharing: `save_params(path, params)` writes one msgpack file (flax's array
encoding: dtype name, shape, raw bytes) whose payload travels with its SHA-256 digest;
`load_params(path, like=params)` verifies the digest, reads it back and checks it against
`like` the same way. msgpack cannot execute code; a pickle (or anything
else) is rejected with a ValueError, never unpickled.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.training.train_state import TrainState

from jaxseq import contracts
from jaxseq._trees import (
    check_tree,
    digest,
    failure_cause,
    flatten,
    unflatten,
)
from jaxseq.history import CheckpointSaveError, History
from jaxseq.saving import (  # weights for sharing live with the model files; named here too
    PARAMS_FORMAT,
    PARAMS_VERSION,
    load_params,
    save_params,
)

__all__ = ["PARAMS_FORMAT", "PARAMS_VERSION", "Checkpoint", "Checkpointer", "digest",
           "latest_epoch", "load_params", "restore", "resume", "save_params", "training_tree"]

FORMAT = "jaxseq.checkpoint"
VERSION = 3  # 3: the arrays' digest in the meta record; 2: one training key, model_state
READ_VERSIONS = (2, 3)  # version 2 has no digest


def _ocp():
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # pragma: no cover - the [checkpoint] extra
        raise ImportError("Checkpoints need orbax-checkpoint: pip install 'jaxseq[checkpoint]'."
                          ) from err
    return ocp


# ---------------------------------------------------------------------------------------------
# Training checkpoints


class Checkpoint(NamedTuple):
    """One restored checkpoint: `epoch` epochs completed; `state` (params, opt_state, step),
    the per-epoch `history`, the training PRNG `key`, the JSON `record` (settings, stop reason), and
    the raw early-stopping arrays (`{path: array}`, empty without EarlyStopping)."""

    epoch: int
    state: TrainState
    history: History
    key: jax.Array
    record: dict
    early_stopping: dict


def _as_dir(directory, where: str) -> str:
    path = contracts.check_path(directory, "checkpoint_dir", where)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{where}: {path!r} is a file, not a checkpoint directory.")
    return os.path.abspath(path)


LOCK_NAME = ".jaxseq-writer.lock"
STOP_REASONS = (None, "early_stopping", "non_finite")


class Checkpointer:
    """The orbax `CheckpointManager` of one training directory.

    writer=True (what `fit` uses): the directory is created if needed and locked for this
    Checkpointer's lifetime (`filelock` on `LOCK_NAME` inside it: an OS lock, released by the
    OS when the process ends, killed or not, so it never blocks the next run); a second writer,
    in this process or another, gets a `RuntimeError` naming the directory before it trains.
    Readers (`restore`, `latest_epoch`) take no lock."""

    def __init__(self, directory, *, keep: int | None = None, writer: bool = True,
                 where: str = "fit"):
        ocp = _ocp()
        self.directory = _as_dir(directory, where)
        self.lock = None
        if not writer and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"No checkpoint directory at {self.directory!r}.")
        if writer:
            self.lock = _lock(self.directory, where)
        try:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=writer, enable_async_checkpointing=False,
            )
            self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
                "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def latest(self) -> int | None:
        """The epoch of the newest complete checkpoint (temporary directories don't count)."""
        return self.manager.latest_step()

    def save(self, epoch: int, tree: Mapping[str, Any], record: dict, *,
             replace: bool = False) -> None:
        """Write {path: array} and the JSON record as checkpoint `epoch` (atomic, synchronous;
        `replace`: the checkpoint of that epoch exists and is written anew, e.g. to record why
        training stopped). The record gets the arrays' `digest`. A failed save leaves no
        temporary directory and raises `CheckpointSaveError` naming the path and the cause."""
        ocp = _ocp()
        arrays = {k: np.asarray(v) for k, v in jax.device_get(dict(tree)).items()}
        record = {"format": FORMAT, "version": VERSION, "epoch": int(epoch),
                  "digest": digest(arrays), **record}
        try:
            if replace and epoch in self.manager.all_steps():
                self.manager.delete(int(epoch))
            self.manager.save(int(epoch), args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(record)),
                force=True)
            self.manager.wait_until_finished()
        except Exception as err:
            for leftover in glob.glob(os.path.join(glob.escape(self.directory),
                                                   f"{int(epoch)}.orbax-checkpoint-tmp*")):
                shutil.rmtree(leftover, ignore_errors=True)
            raise CheckpointSaveError(
                f"The checkpoint after epoch {epoch} could not be saved in {self.directory!r}: "
                f"{failure_cause(err)}.", path=self.directory, epoch=int(epoch)) from err

    def record(self, epoch: int) -> dict:
        """The checked JSON record of checkpoint `epoch`."""
        ocp = _ocp()
        try:
            record = self.manager.restore(epoch, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
        except Exception as err:
            raise self._unreadable(epoch, err) from err
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{self._path(epoch)} is not a jaxseq checkpoint (its meta record "
                             f"is {str(record)[:80]!r}).")
        if record.get("version") not in READ_VERSIONS:
            raise ValueError(f"{self._path(epoch)} has checkpoint format version "
                             f"{record.get('version')}; this jaxseq reads versions "
                             f"{list(READ_VERSIONS)}.")
        problem = _record_problem(record, epoch)
        if problem:
            raise ValueError(f"The checkpoint {self._path(epoch)} has an invalid meta record: "
                             f"{problem}. Delete it to resume from an earlier one.")
        return record

    def arrays(self, epoch: int, expected: Mapping[str, Any], *, where: str,
               ignore_extra: tuple[str, ...] = (), record: dict | None = None
               ) -> dict[str, np.ndarray]:
        """Check the saved tree against `expected` ({path: like-array}), then read it; with the
        `record` of a version that stores it, the arrays' digest must match the record's."""
        ocp = _ocp()
        try:
            meta = self.manager.item_metadata(epoch)["state"]
            found = dict(meta.tree if hasattr(meta, "tree") else meta)
        except Exception as err:
            raise self._unreadable(epoch, err) from err
        check_tree(expected, found, where=f"{where} ({self._path(epoch)})",
                   ignore_extra=ignore_extra)
        try:
            arrays = self.manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore())).state
        except Exception as err:
            raise self._unreadable(epoch, err) from err
        check_tree(expected, arrays, where=f"{where} ({self._path(epoch)})",
                   ignore_extra=ignore_extra)
        if record is not None and "digest" in record and digest(arrays) != record["digest"]:
            raise ValueError(f"The checkpoint {self._path(epoch)} is inconsistent: its arrays "
                             "are not those its meta record was saved with (two runs wrote to "
                             "one directory, or a file was changed). Delete it to resume from "
                             "an earlier one.")
        return dict(arrays)

    def close(self) -> None:
        try:
            self.manager.close()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _path(self, epoch: int) -> str:
        return os.path.join(self.directory, str(epoch))

    def _unreadable(self, epoch: int, err: Exception) -> ValueError:
        return ValueError(f"The checkpoint {self._path(epoch)} is unreadable or corrupt "
                          f"({type(err).__name__}: {str(err)[:200]}). Delete it to resume from "
                          "an earlier one.")


def _lock(directory: str, where: str):
    try:
        import filelock
    except ImportError as err:  # pragma: no cover - the [checkpoint] extra
        raise ImportError("Checkpoints need filelock: pip install 'jaxseq[checkpoint]'."
                          ) from err
    os.makedirs(directory, exist_ok=True)
    lock = filelock.FileLock(os.path.join(directory, LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RuntimeError(
            f"{where}: the checkpoint directory {directory!r} is in use by another run (a "
            "training process, in this process or another, holds its writer lock). A checkpoint "
            "directory takes one run at a time: pass another checkpoint_dir, or wait until that "
            "run ends and pass resume=True to continue it.") from None
    return lock


def _record_problem(record: dict, epoch: int) -> str | None:
    """What is wrong with a checkpoint's meta record, or None."""
    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if record.get("epoch") != epoch or not count(record.get("epoch")):
        return f"epoch is {record.get('epoch')!r}, its directory says {epoch}"
    step = record.get("step")
    if not (count(step) or isinstance(step, list) and step and all(map(count, step))):
        return f"step is {step!r} (expected a count >= 0, or one per replica)"
    history = record.get("history")
    if not isinstance(history, dict) or "loss" not in history or not all(
            isinstance(v, list) for v in history.values()):
        return "history is not {name: [values per epoch]} with a loss"
    if record.get("stopped") not in STOP_REASONS:
        return f"stopped is {record.get('stopped')!r} (expected one of {STOP_REASONS})"
    if not isinstance(record.get("settings", {}), dict):
        return "settings is not a record"
    if "digest" in record and not isinstance(record["digest"], str):
        return "digest is not a string"
    return None


def training_tree(state: TrainState, key, stop_state=()) -> dict[str, Any]:
    """The flat array tree of a training checkpoint (leaves may carry a replica axis)."""
    tree = {**flatten(state.params, "params/"), **flatten(state.opt_state, "opt_state/"),
            **flatten(getattr(state, "model_state", {}), "model_state/"), "key": key}
    if stop_state:  # () when not saved
        tree.update(flatten(stop_state, "early_stopping/"))
    return tree


def history_from(record: dict) -> History:
    """The `History` of a checkpoint record (its "history" entry; null values become NaN)."""
    return History({k: np.asarray(v, np.float64).astype(np.float32)  # null -> NaN
                    for k, v in record["history"].items()})


def history_record(history: History) -> dict[str, list]:
    """JSON-able history: NaN (a stopped replica's epochs) as null."""
    out = {}
    for k, v in history.history.items():
        a = np.asarray(v, np.float64).astype(object)
        a[np.isnan(np.asarray(v, np.float64))] = None
        out[k] = a.tolist()
    return out


def latest_epoch(directory: str | os.PathLike) -> int | None:
    """The epoch of the newest complete checkpoint in `directory`, or None if there is none."""
    path = _as_dir(directory, "latest_epoch")
    if not os.path.isdir(path):
        return None
    checkpointer = Checkpointer(path, writer=False, where="latest_epoch")
    try:
        return checkpointer.latest()
    finally:
        checkpointer.close()


def restore(directory: str | os.PathLike, like: TrainState, *,
            epoch: int | None = None) -> Checkpoint:
    """Read the checkpoint after `epoch` epochs (default: the latest complete one).

    like: a TrainState of the same model and optimizer (e.g.
    `training.create_train_state(model, tx, x, key)`); only its tree structure, shapes and
    dtypes are used. Returns a `Checkpoint` whose `state` holds the training parameters (not
    the early-stopping best ones, which are in
    `early_stopping["early_stopping/best_params/..."]`). Raises FileNotFoundError when there is
    no complete checkpoint, ValueError on a mismatching tree or a corrupt checkpoint.
    """
    checkpointer = Checkpointer(directory, writer=False, where="restore")
    try:
        if epoch is None:
            epoch = checkpointer.latest()
            if epoch is None:
                raise FileNotFoundError(f"No complete checkpoint in {checkpointer.directory!r}.")
        elif epoch not in checkpointer.manager.all_steps():
            raise FileNotFoundError(f"No complete checkpoint for epoch {epoch} in "
                                    f"{checkpointer.directory!r}; there are "
                                    f"{sorted(checkpointer.manager.all_steps())}.")
        key = jax.random.PRNGKey(0)  # a training key's shape and dtype (`split_seed`'s)
        expected = training_tree(like, key)
        record = checkpointer.record(epoch)
        arrays = checkpointer.arrays(epoch, expected, where="restore",
                                     ignore_extra=("early_stopping/",), record=record)
    finally:
        checkpointer.close()
    state = _state_from(like, arrays, record)
    extra = {k: v for k, v in arrays.items() if k.startswith("early_stopping/")}
    return Checkpoint(int(epoch), state, history_from(record), jnp.asarray(arrays["key"]), record,
                      extra)


def _state_from(like: TrainState, arrays, record) -> TrainState:
    changes = dict(params=unflatten(like.params, arrays, "params/"),
                   opt_state=unflatten(like.opt_state, arrays, "opt_state/"),
                   step=jnp.asarray(record["step"], jnp.int32))
    if hasattr(like, "model_state"):
        changes["model_state"] = unflatten(like.model_state, arrays, "model_state/")
    return like.replace(**changes)


def check_settings(record: dict, settings: dict, directory: str) -> None:
    """Raise unless the checkpoint was written with these `settings` (exact resume needs them)."""
    saved = record.get("settings", {})
    for name, value in settings.items():
        if saved.get(name) != value:
            raise ValueError(
                f"fit(resume=True): the checkpoint in {directory!r} was written with "
                f"{name}={saved.get(name)!r}, but fit was called with {name}={value!r}. Resume "
                "with the same settings (exact resume depends on them), or start the new run "
                "in another directory."
            )


def resume(checkpointer: Checkpointer, epoch: int, state: TrainState, key, stop_state,
           settings: dict):
    """What `fit(resume=True)` continues from: -> (state, key, stop_state, history).

    `state`, `key` and `stop_state` are the driver's freshly built ones (templates); the
    settings and the whole tree, early-stopping state included, must match the checkpoint.
    """
    record = checkpointer.record(epoch)
    check_settings(record, settings, checkpointer.directory)
    expected = training_tree(state, key, stop_state)
    arrays = checkpointer.arrays(epoch, expected, where="fit(resume=True)", record=record)
    state = _state_from(state, arrays, record)
    if stop_state:
        stop_state = unflatten(stop_state, arrays, "early_stopping/")
    return state, jnp.asarray(arrays["key"]), stop_state, history_from(record)
