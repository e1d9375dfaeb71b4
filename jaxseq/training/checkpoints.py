"""The driver's checkpoint hook: a run's checkpoint directory opened (and locked), resumed
from, written after chunks, closed. `jaxseq.checkpointing` (orbax) is imported only by a run
that saves checkpoints."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxseq import parallel
from jaxseq.history import CheckpointSaveError
from jaxseq.training import callbacks as cbs
from jaxseq.training.hooks import Record
from jaxseq.training.spec import Host, Layout, Program, Source

__all__ = ["Saver", "settings"]


def settings(program: Program, layout: Layout, host: Host, data: Source,
             names: Sequence[str]) -> dict:
    """What exact resume depends on, recorded in every checkpoint and compared on resume."""
    return dict(
        seed=list(layout.seeds) if layout.replicated else layout.seeds[0],
        batch_size=program.batch_size, n_samples=data.n, shuffle=program.shuffle,
        validation=data.val is not None, logs=list(names), loss=program.loss_name,
        early_stopping=host.stopper.config() if host.stopper else None)


class Saver:
    """The checkpoints of one run (`host.checkpoints`), written by one writer: the directory is
    locked from `open` to `close`."""

    def __init__(self, host: Host, settings: dict):
        from jaxseq import checkpointing  # orbax, only when checkpoints are used

        self.io, self.host, self.settings, self.saved = checkpointing, host, settings, 0
        spec = host.checkpoints
        self.checkpointer = checkpointing.Checkpointer(spec.directory, keep=spec.keep,
                                                       where=host.where)

    @classmethod
    def open(cls, program: Program, layout: Layout, host: Host, data: Source,
             names: Sequence[str]) -> Saver | None:
        """The run's Saver, or None when it saves no checkpoints."""
        if host.checkpoints is None:
            return None
        return cls(host, settings(program, layout, host, data, names))

    def resume(self, state, key, stop, record: Record):
        """-> (state, key, stop): the latest checkpoint's with `resume=True` (and `record`
        continues its history), the given ones in an empty directory."""
        latest = self.checkpointer.latest()
        if latest is None:
            return state, key, stop
        if not self.host.checkpoints.resume:
            raise ValueError(
                f"{self.host.where}: {self.checkpointer.directory!r} already holds checkpoints "
                f"(the latest after {latest} epochs). Pass resume=True to continue that run, or "
                "use an empty checkpoint_dir for a new one.")
        stopper = self.host.stopper is not None
        state, key, saved_stop, record.history = self.io.resume(
            self.checkpointer, latest, state, key, stop if stopper else (), self.settings)
        record.first = self.saved = latest
        return state, key, saved_stop if stopper else stop

    def after_chunk(self, record: Record, carry, key) -> None:
        """Save at checkpoint epochs and when the run ends; a stop found in the chunk after a
        save rewrites that save with its reason. A failed save raises `CheckpointSaveError`
        carrying the run as `fit(epochs=<epochs done>)` returns it."""
        first, failure = record.first, record.failure
        restate = record.stopped and failure is not None and first == self.saved > 0
        if not (restate or first != self.saved and (first % record.every == 0 or record.done)):
            return
        early = np.asarray(parallel.to_host(carry.stop.stopped)).any()
        why = "non_finite" if failure else "early_stopping" if early else None
        tree = self.io.training_tree(carry.state, key,
                                     carry.stop if self.host.stopper else ())
        meta = dict(step=np.asarray(parallel.to_host(carry.state.step)).tolist(),
                    history=self.io.history_record(record.history), stopped=why,
                    settings=self.settings)
        try:
            self.checkpointer.save(first, tree, meta, replace=restate)
        except CheckpointSaveError as err:
            record.progress.close()
            raise CheckpointSaveError(
                f"{self.host.where}: {err} Training stopped after {first} epoch(s); nothing "
                "trained is lost: this error's .state and .history hold the run as "
                f"fit(epochs={first}) returns it (save them, or pass state= to go on).",
                path=err.path, epoch=first, state=cbs.restore_best(carry.stop, carry.state),
                history=record.history) from err.__cause__
        self.saved = first

    @property
    def directory(self) -> str:
        return self.checkpointer.directory

    def close(self) -> None:
        self.checkpointer.close()
