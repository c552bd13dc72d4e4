"""The callback base class: policies and stateful helpers that follow the training loop's events.

The event names and the ``state_key``/``state_dict``/``on_save_checkpoint`` protocol are Lightning's,
so a Lightning callback that only uses these ports by changing its base class. Every method receives
the :class:`~ckpthooks.Checkpointer` where Lightning passes ``trainer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckpthooks.checkpointer import Checkpointer
    from ckpthooks.manifest import Manifest


class Callback:
    """Base class for callbacks and policies. Override only what you need."""

    @property
    def state_key(self) -> str:
        """The key of this callback's state in ``checkpoint["callbacks"]``; unique per checkpointer."""
        return type(self).__qualname__

    def _generate_state_key(self, **kwargs: Any) -> str:
        """A state key that embeds ``kwargs``, for callbacks that may be used several times."""
        return f"{type(self).__qualname__}{kwargs!r}"

    # ------------------------------------------------------------------ events
    def setup(self, checkpointer: Checkpointer) -> None:
        """Called once when the callback is attached to a checkpointer."""

    def on_fit_start(self, checkpointer: Checkpointer) -> None:
        """Called when the loop starts, after any restore."""

    def on_train_epoch_start(self, checkpointer: Checkpointer) -> None:
        """Called at the start of every epoch."""

    def on_train_batch_end(self, checkpointer: Checkpointer) -> None:
        """Called after every training step, once ``global_step`` counts it."""

    def on_train_epoch_end(self, checkpointer: Checkpointer) -> None:
        """Called at the end of every epoch, before ``on_validation_end``."""

    def on_validation_end(self, checkpointer: Checkpointer) -> None:
        """Called after validation: at the end of every epoch, or by ``Checkpointer.validation_end``."""

    def on_fit_end(self, checkpointer: Checkpointer) -> None:
        """Called when the loop finishes normally."""

    def on_exception(self, checkpointer: Checkpointer, exception: BaseException) -> None:
        """Called when the loop raises."""

    def on_checkpoint_committed(self, checkpointer: Checkpointer, path: str, manifest: Manifest) -> None:
        """Called on the writer rank when a checkpoint at ``path`` has been committed."""

    def on_checkpoint_failed(self, checkpointer: Checkpointer, path: str, error: BaseException) -> None:
        """Called on the writer rank when a background save (``async_save``) of ``path`` failed.

        Runs on the save worker thread; the error itself reaches the training thread at the next
        save, at ``wait()`` or at ``close()``.
        """

    def retains(self, checkpointer: Checkpointer, path: str) -> bool:
        """Return ``True`` to keep ``path`` when a policy is about to delete it (retention veto)."""
        return False

    def teardown(self, checkpointer: Checkpointer) -> None:
        """Called when the checkpointer closes."""

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """This callback's state; an empty dict means "stateless" (nothing is saved)."""
        return {}

    def has_state(self) -> bool:
        """Whether :meth:`state_dict` has something to save. A save asks this first and builds the
        state once; override it when the state is costly to build and the answer is cheap."""
        return bool(self.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def on_save_checkpoint(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
        """Edit the whole checkpoint dict before it is written."""

    def on_load_checkpoint(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
        """Read the whole checkpoint dict after it is loaded, before state is restored."""
