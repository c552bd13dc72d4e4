"""The callback base class: policies and stateful helpers that follow the training loop's events.

The event names and the ``state_key``/``state_dict``/``on_save_checkpoint`` protocol are Lightning's,
so a Lightning callback that only uses these ports by changing its base class. Every method receives
the :class:`~ckpthooks.Checkpointer` where Lightning passes ``trainer``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from ckpthooks.exceptions import ConfigurationError

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._manifest import Manifest


class Callback:
    """Base class for callbacks and policies. Override only what you need.

    A *policy* is a callback that saves checkpoints. What the runtime asks of one is declared
    here, with defaults that fit a callback that saves nothing: :attr:`saves_checkpoints`,
    :attr:`is_default_policy`, :meth:`checkpoint_folders`, :attr:`resolves_best` and
    :meth:`find_best`. ``ModelCheckpoint`` implements them; the runtime knows no policy by name.
    """

    #: Whether this callback writes checkpoints on its own (a policy). Such a callback is refused
    #: with ``Checkpointer(enable_checkpointing=False)``, and one besides the default policy
    #: replaces it.
    saves_checkpoints: bool = False

    #: Set on the policy the built-in plugin contributes when checkpointing is enabled. The
    #: runtime keeps a default policy only when checkpointing is enabled and no other callback
    #: saves checkpoints (:func:`with_default_policy`).
    is_default_policy: bool = False

    def checkpoint_folders(self) -> Sequence[str]:
        """The folders (or URLs) this callback writes checkpoints to, known once :meth:`setup`
        ran. ``ckpt_path="last"`` looks there (with subfolders), temporary files a crashed save
        left there are removed at start, and the first policy's first folder receives the
        preemption save. Default: none."""
        return ()

    @property
    def resolves_best(self) -> bool:
        """Whether :meth:`find_best` can answer ``ckpt_path="best"`` (``ModelCheckpoint``: when it
        has a ``monitor``). The first callback that can answers. Default: ``False``."""
        return False

    def find_best(self, checkpointer: Checkpointer) -> str | None:
        """The path of this policy's best committed checkpoint (read from manifests, so that it
        works in a new process), or ``None`` when there is none yet. Called only when
        :attr:`resolves_best` is true."""
        return None

    @property
    def state_key(self) -> str:
        """The key of this callback's state in ``checkpoint["callbacks"]``; unique per checkpointer."""
        return type(self).__qualname__

    def state_key_aliases(self) -> Sequence[str]:
        """Earlier keys of this callback's state (a key that changed between versions): a restore
        reads the state from the first one present when :attr:`state_key` is absent and no other
        callback has that key. Default: none."""
        return ()

    def earlier_state_key(self, unclaimed: Collection[str]) -> str | None:
        """The key among ``unclaimed`` (saved states no current callback has) that holds this
        callback's state when :attr:`state_key` is absent. Default: the first of
        :meth:`state_key_aliases` present. Override for keys that embed a value that may change
        between runs (``ModelCheckpoint`` recognises its key with another ``dirpath``)."""
        return next((alias for alias in self.state_key_aliases() if alias in unclaimed), None)

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


def as_list(value: Any) -> list[Any]:
    """``None`` as ``[]``, a list or tuple as a list, anything else as a list of one."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def configured_callbacks(callbacks: Any, *, enable_checkpointing: bool) -> list[Callback]:
    """The ``callbacks=`` a checkpointer was given (one, a sequence or ``None``) as a list, checked:
    only :class:`Callback` instances, and none that saves checkpoints when checkpointing is off."""
    found = as_list(callbacks)
    for cb in found:
        if not isinstance(cb, Callback):
            raise ConfigurationError(f"callbacks must be ckpthooks.Callback instances, not {type(cb).__name__}")
        if not enable_checkpointing and cb.saves_checkpoints:
            raise ConfigurationError(
                f"enable_checkpointing=False, but {cb!r} among the callbacks saves checkpoints: "
                "remove it or enable checkpointing"
            )
    return found


def with_default_policy(
    configured: Sequence[Callback], contributed: Sequence[Callback], *, enable_checkpointing: bool
) -> list[Callback]:
    """The callbacks a checkpointer runs, in the order they run: the ``configured`` ones, then the
    ``contributed`` ones (plugins' policies), with every default policy left out when checkpointing
    is disabled or another callback saves checkpoints (the one place that decides about the
    default policy), and the policies after every other callback (:func:`policies_last`)."""
    callbacks = [*configured, *contributed]
    others_save = any(cb.saves_checkpoints and not cb.is_default_policy for cb in callbacks)
    if others_save or not enable_checkpointing:
        callbacks = [cb for cb in callbacks if not cb.is_default_policy]
    _check_state_keys(callbacks)
    return policies_last(callbacks)


def policies_last(callbacks: Sequence[Callback]) -> list[Callback]:
    """``callbacks`` with every policy (a callback that saves checkpoints) moved to the end, each
    group in its own order, as Lightning's ``_reorder_callbacks`` orders its ``Checkpoint``
    callbacks: a policy then sees, and saves, the state the other callbacks reached at the same
    event, whatever order they were listed in."""
    return [cb for cb in callbacks if not cb.saves_checkpoints] + [cb for cb in callbacks if cb.saves_checkpoints]


def _check_state_keys(callbacks: Sequence[Callback]) -> None:
    seen: dict[str, Callback] = {}
    for cb in callbacks:
        key = cb.state_key
        if key in seen and cb.state_dict():
            raise ConfigurationError(
                f"two callbacks share the state key {key!r} ({seen[key]!r} and {cb!r}); give "
                "them different options (e.g. another monitor or dirpath) so their state "
                "can be told apart"
            )
        seen[key] = cb
