"""When a ModelCheckpoint saves: every N steps, every N epochs, every time interval."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta

from ckpthooks.exceptions import ConfigurationError


@dataclass
class SaveSchedule:
    """Lightning's triggers. With no step or time trigger, ``every_n_epochs`` defaults to 1."""

    every_n_train_steps: int | None = None
    every_n_epochs: int | None = None
    train_time_interval: timedelta | None = None
    save_on_train_epoch_end: bool | None = None
    _last_time: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.every_n_train_steps is not None and self.every_n_train_steps < 0:
            raise ConfigurationError(f"every_n_train_steps must be >= 0, not {self.every_n_train_steps}")
        if self.every_n_epochs is not None and self.every_n_epochs < 0:
            raise ConfigurationError(f"every_n_epochs must be >= 0, not {self.every_n_epochs}")
        if self.train_time_interval is not None and not isinstance(self.train_time_interval, timedelta):
            raise ConfigurationError("train_time_interval must be a datetime.timedelta")
        enabled = [
            name
            for name, on in (
                ("every_n_train_steps", bool(self.every_n_train_steps)),
                ("every_n_epochs", bool(self.every_n_epochs)),
                ("train_time_interval", self.train_time_interval is not None),
            )
            if on
        ]
        if len(enabled) > 1:
            raise ConfigurationError(
                f"{' and '.join(enabled)} are mutually exclusive: a ModelCheckpoint saves on one "
                "trigger; use one ModelCheckpoint per trigger to combine them"
            )
        if self.every_n_epochs is None:
            self.every_n_epochs = 0 if enabled else 1
        self.every_n_train_steps = self.every_n_train_steps or 0

    def start(self) -> None:
        self._last_time = time.monotonic()

    def due_after_step(self, global_step: int) -> bool:
        """Whether a step-based or time-based save is due after ``global_step`` steps."""
        if self.every_n_train_steps and global_step % self.every_n_train_steps == 0:
            return True
        if self.train_time_interval is not None:
            now = time.monotonic()
            if self._last_time is None:
                self._last_time = now
            elif now - self._last_time >= self.train_time_interval.total_seconds():
                self._last_time = now
                return True
        return False

    def due_at_epoch_end(self, epoch: int) -> bool:
        every = self.every_n_epochs or 0
        return every > 0 and (epoch + 1) % every == 0

    def saves_on_train_epoch_end(self) -> bool:
        """Epoch saves happen at train-epoch end when asked, else when validation ends."""
        return bool(self.save_on_train_epoch_end)
