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
- `meta/`: JSON (orbax `JsonSave`): format and version, `epoch`, optimizer `step`, the per-epoch
  `history`, why training `stopped` (None, "early_stopping", "non_finite"), and the `settings`
  that exact resume depends on (seed, effective batch size, number of samples, shuffle,
  validation, loss name, early-stopping rule). Resuming with other settings raises.

Saves are synchronous and atomic (orbax writes `d/<epoch>.orbax-checkpoint-tmp`, then renames
it): a process killed mid-save leaves a temporary directory that is never restored. Restoring
checks the tree against the model's before reading data: a mismatch raises a ValueError naming
the first mismatching path and both shapes; a corrupt or foreign file raises ValueError.

Weights for sharing: `save_params(path, params)` writes one msgpack file (flax's array
encoding: dtype name, shape, raw bytes); `load_params(path, like=params)` reads it back and
checks it against `like` the same way. msgpack cannot execute code; a pickle (or anything
else) is rejected with a ValueError, never unpickled.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax.training.train_state import TrainState

from jaxseq._trees import (
    check_tree,
    flatten,
    host_arrays,
    nest,
    read_msgpack,
    unflatten,
    write_msgpack,
)
from jaxseq.training.state import History, split_seed

FORMAT = "jaxseq.checkpoint"
PARAMS_FORMAT = "jaxseq.params"
VERSION = 2  # 2: one training key, model_state, early stopping settings in the carry
PARAMS_VERSION = 1


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


def _as_dir(directory) -> str:
    path = os.fspath(directory)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file, not a checkpoint directory.")
    return os.path.abspath(path)


class Checkpointer:
    """The orbax `CheckpointManager` of one training directory (used by `fit`)."""

    def __init__(self, directory, *, keep: int | None = None, create: bool = True):
        ocp = _ocp()
        self.directory = _as_dir(directory)
        if not create and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"No checkpoint directory at {self.directory!r}.")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, enable_async_checkpointing=False,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def latest(self) -> int | None:
        """The epoch of the newest complete checkpoint (temporary directories don't count)."""
        return self.manager.latest_step()

    def save(self, epoch: int, tree: Mapping[str, Any], record: dict) -> None:
        """Write {path: array} and the JSON record as checkpoint `epoch` (atomic, synchronous)."""
        ocp = _ocp()
        arrays = {k: np.asarray(v) for k, v in jax.device_get(dict(tree)).items()}
        record = {"format": FORMAT, "version": VERSION, "epoch": int(epoch), **record}
        self.manager.save(int(epoch), args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(record)), force=True)
        self.manager.wait_until_finished()

    def record(self, epoch: int) -> dict:
        ocp = _ocp()
        try:
            record = self.manager.restore(epoch, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta
        except Exception as err:
            raise self._unreadable(epoch, err) from err
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{self._path(epoch)} is not a jaxseq checkpoint (its meta record "
                             f"is {str(record)[:80]!r}).")
        if record.get("version") != VERSION:
            raise ValueError(f"{self._path(epoch)} has checkpoint format version "
                             f"{record.get('version')}; this jaxseq reads version {VERSION}.")
        return record

    def arrays(self, epoch: int, expected: Mapping[str, Any], *, where: str,
               ignore_extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Check the saved tree against `expected` ({path: like-array}), then read it."""
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
        return dict(arrays)

    def close(self) -> None:
        self.manager.close()

    def _path(self, epoch: int) -> str:
        return os.path.join(self.directory, str(epoch))

    def _unreadable(self, epoch: int, err: Exception) -> ValueError:
        return ValueError(f"The checkpoint {self._path(epoch)} is unreadable or corrupt "
                          f"({type(err).__name__}: {str(err)[:200]}). Delete it to resume from "
                          "an earlier one.")


def training_tree(state: TrainState, key, stop_state=()) -> dict[str, Any]:
    """The flat array tree of a training checkpoint (leaves may carry a replica axis)."""
    tree = {**flatten(state.params, "params/"), **flatten(state.opt_state, "opt_state/"),
            **flatten(getattr(state, "model_state", {}), "model_state/"), "key": key}
    if stop_state:  # () when not saved
        tree.update(flatten(stop_state, "early_stopping/"))
    return tree


def history_from(record: dict) -> History:
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
    path = _as_dir(directory)
    if not os.path.isdir(path):
        return None
    checkpointer = Checkpointer(path, create=False)
    try:
        return checkpointer.latest()
    finally:
        checkpointer.close()


def restore(directory: str | os.PathLike, like: TrainState, *,
            epoch: int | None = None) -> Checkpoint:
    """Read the checkpoint after `epoch` epochs (default: the latest complete one).

    like: a TrainState of the same model and optimizer (e.g. `training.init_state(model, x, tx,
    key)`); only its tree structure, shapes and dtypes are used. Returns a `Checkpoint` whose
    `state` holds the training parameters (not the early-stopping best ones, which are in
    `early_stopping["early_stopping/best_params/..."]`). Raises FileNotFoundError when there is
    no complete checkpoint, ValueError on a mismatching tree or a corrupt checkpoint.
    """
    checkpointer = Checkpointer(directory, create=False)
    try:
        if epoch is None:
            epoch = checkpointer.latest()
            if epoch is None:
                raise FileNotFoundError(f"No complete checkpoint in {checkpointer.directory!r}.")
        elif epoch not in checkpointer.manager.all_steps():
            raise FileNotFoundError(f"No complete checkpoint for epoch {epoch} in "
                                    f"{checkpointer.directory!r}; there are "
                                    f"{sorted(checkpointer.manager.all_steps())}.")
        _, key = split_seed(0)  # shapes and dtypes only
        expected = training_tree(like, key)
        record = checkpointer.record(epoch)
        arrays = checkpointer.arrays(epoch, expected, where="restore",
                                     ignore_extra=("early_stopping/",))
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
    arrays = checkpointer.arrays(epoch, expected, where="fit(resume=True)")
    state = _state_from(state, arrays, record)
    if stop_state:
        stop_state = unflatten(stop_state, arrays, "early_stopping/")
    return state, jnp.asarray(arrays["key"]), stop_state, history_from(record)


# ---------------------------------------------------------------------------------------------
# Weights for sharing


def save_params(path: str | os.PathLike, params) -> None:
    """Write `params` (any tree of arrays) to one msgpack file at `path`, atomically."""
    write_msgpack(path, {"format": PARAMS_FORMAT, "version": PARAMS_VERSION,
                         "params": host_arrays(params)})


def load_params(path: str | os.PathLike, *, like=None):
    """Read parameters written by `save_params`.

    like: a tree of the expected structure (e.g. `model.init(key, x)["params"]`); the file must
    hold exactly its paths, shapes and dtypes (else ValueError naming the first mismatching path
    and both shapes), and the result has its structure. Without `like`, nested dicts keyed by
    the path components. Anything that is not a jaxseq params file raises ValueError.
    """
    path = os.fspath(path)
    content = read_msgpack(path, PARAMS_FORMAT, "params")
    if not isinstance(content.get("params"), dict):
        raise ValueError(f"{path!r} is not a jaxseq params file (no params record).")
    if content.get("version") != PARAMS_VERSION:
        raise ValueError(f"{path!r} has params format version {content.get('version')}; this "
                         f"jaxseq reads version {PARAMS_VERSION}.")
    flat = content["params"]
    nested = nest(flat, path)  # checks every entry is a numeric array
    if like is not None:
        check_tree(flatten(like), flat, where=f"load_params({path!r})")
        return unflatten(like, flat)
    return nested
