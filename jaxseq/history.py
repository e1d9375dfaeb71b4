"""What a training run leaves behind: its per-epoch `History`, and the errors that end a run
while carrying the state and history trained so far (`NonFiniteLossError`,
`CheckpointSaveError`).

They sit below both the training drivers, which raise them, and `jaxseq.checkpointing`, which
writes histories and raises `CheckpointSaveError`; `jaxseq.training` re-exports them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CheckpointSaveError", "History", "NonFiniteLossError"]


@dataclasses.dataclass
class History:
    """Per-epoch logs, as Keras' `History`: `history.history["loss"]`, or `history.loss`.

    Each entry has shape (epochs,) for `fit`, (replicas, epochs) for `fit_replicas` (NaN after a
    replica stopped). `epoch` lists the epoch indices run. `nonfinite` (fit_replicas): bool
    (replicas,), True for the replicas whose training went non-finite."""

    history: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    nonfinite: np.ndarray | None = None  # bool (replicas,) for fit_replicas: training failed

    @property
    def epoch(self) -> np.ndarray:
        return np.arange(np.shape(self.loss)[-1])

    @property
    def loss(self) -> np.ndarray:
        return self.history.get("loss", np.zeros((0,), np.float32))

    @property
    def val_loss(self) -> np.ndarray | None:
        return self.history.get("val_loss")

    def __getattr__(self, name: str):
        if name != "history" and name in self.__dict__.get("history", {}):
            return self.history[name]
        raise AttributeError(name)

    def extend(self, logs: dict[str, np.ndarray]) -> None:
        """Append per-epoch values along the last (epoch) axis."""
        for key, values in logs.items():
            values = np.asarray(values)
            old = self.history.get(key)
            self.history[key] = values if old is None else np.concatenate([old, values], -1)


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss (or parameters).

    For `fit`: `epoch` and `batch` are 0-based indices (`batch` is None when only the epoch mean
    overflowed). For `fit_replicas`: `replicas` lists the failed replica indices and `epoch`,
    `batch` are those of the first of them. `state` and `history` are the last finite ones, as
    `on_nan="stop"` returns them."""

    def __init__(self, message: str, *, epoch: int, batch: int | None, state, history,
                 replicas: tuple[int, ...] = ()):
        super().__init__(message)
        self.epoch, self.batch, self.state, self.history = epoch, batch, state, history
        self.replicas = replicas


class CheckpointSaveError(OSError):
    """A training checkpoint could not be written (disk full, directory removed or read-only).

    The run stops there, and nothing trained is lost: `state` and `history` are what `fit` (or
    `fit_replicas`) would have returned had it been asked for exactly `epoch` epochs. `path` is
    the checkpoint directory. No temporary directory of the failed save is left behind."""

    def __init__(self, message: str, *, path: str, epoch: int, state=None, history=None):
        super().__init__(message)
        self.path, self.epoch, self.state, self.history = path, epoch, state, history
