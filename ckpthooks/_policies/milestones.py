"""``KeepMilestones``: keep one checkpoint per N steps or per time interval, whatever top-k prunes."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ckpthooks._callbacks import Callback
from ckpthooks._io import paths
from ckpthooks.exceptions import ConfigurationError

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._manifest import CommittedCheckpoint, Manifest

log = logging.getLogger(__name__)


class KeepMilestones(Callback):
    """Retain milestone checkpoints that other policies would delete (a retention rule).

    The first checkpoint committed in each window of ``every_n_train_steps`` steps (or of
    ``every`` wall-clock time since the first commit) becomes a milestone: when a policy such as
    ``ModelCheckpoint`` prunes it later, the file stays. It writes nothing itself; combine it with a
    ``ModelCheckpoint`` that saves often enough.

    Example: keep a checkpoint every 1000 steps while top-3 by ``val_loss`` rotates::

        Checkpointer(callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=3,
                                                every_n_train_steps=100),
                                KeepMilestones(every_n_train_steps=1000)])
    """

    def __init__(self, every_n_train_steps: int | None = None, every: timedelta | None = None) -> None:
        if (every_n_train_steps is None) == (every is None):
            raise ConfigurationError("KeepMilestones needs exactly one of every_n_train_steps= or every=")
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ConfigurationError(f"every_n_train_steps must be >= 1, not {every_n_train_steps}")
        if every is not None and every.total_seconds() <= 0:
            raise ConfigurationError(f"every must be a positive timedelta, not {every}")
        self.every_n_train_steps = every_n_train_steps
        self.every = every
        self.milestones: dict[int, str] = {}
        self._origin: float | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(every_n_train_steps=self.every_n_train_steps, every=str(self.every))

    def _window(self, manifest: Manifest) -> int:
        if self.every_n_train_steps is not None:
            return manifest.global_step // self.every_n_train_steps
        assert self.every is not None
        if self._origin is None:
            self._origin = manifest.created
        return int((manifest.created - self._origin) // self.every.total_seconds())

    def on_checkpoint_committed(self, checkpointer: Checkpointer, path: str, manifest: Manifest) -> None:
        if (manifest.writer or "").endswith("#last"):
            return  # "last" is rewritten in place; it can be no milestone
        window = self._window(manifest)
        if window not in self.milestones:
            self.milestones[window] = paths.normalize(path)
            log.info("milestone %d: %s", window, path)

    def keep(self, checkpoints: Sequence[CommittedCheckpoint]) -> Collection[str]:
        """As a retention rule: the milestones among ``checkpoints``."""
        milestones = set(self.milestones.values())
        return [c.path for c in checkpoints if paths.normalize(c.path) in milestones]

    def retains(self, checkpointer: Checkpointer, path: str) -> bool:
        """The per-path veto, for deletions outside a policy's pruning (``remove_checkpoint``)."""
        return paths.normalize(path) in self.milestones.values()

    def state_dict(self) -> dict[str, Any]:
        return {"milestones": {str(k): v for k, v in self.milestones.items()}, "origin": self._origin}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.milestones = {int(k): v for k, v in state_dict.get("milestones", {}).items()}
        self._origin = state_dict.get("origin")

    def __repr__(self) -> str:
        return f"KeepMilestones(every_n_train_steps={self.every_n_train_steps}, every={self.every})"
