"""The hook specification: the contract between ckpthooks and its plugins.

A plugin is any object (usually a module) with functions named like the hooks below and marked with
:data:`ckpthooks.hookimpl`. Built-in features are plugins too, registered the same way. Third-party
plugins are found through the ``ckpthooks`` entry-point group::

    [project.entry-points.ckpthooks]
    my_plugin = "my_package.ckpthooks_plugin"

Rules that hold for every hook:

* A hook implementation may accept any subset of the parameters a hook declares, by name.
* Hooks are called on every rank of a distributed run unless their text says otherwise.
* Contribution hooks (``register_*``) return their contributions and cannot be wrappers; they
  are called once per :class:`~ckpthooks.Checkpointer` (storage backends: once per protocol);
  their results are combined in a deterministic order (built-in plugins first, then external
  plugins ordered by name) and two contributions of the same name raise
  :class:`~ckpthooks.exceptions.DuplicateContributionError` naming both plugins.
* Storage hooks (``save_checkpoint``, ``load_checkpoint``, ``remove_checkpoint``) stop at the first
  implementation that returns something other than ``None``; the built-in implementation runs last
  and hands the work to the :class:`~ckpthooks.CheckpointIO` chosen for the path.

This module imports nothing heavy: ``torch`` and the runtime classes appear only for type checking.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ckpthooks.callbacks import Callback
    from ckpthooks.checkpointer import Checkpointer
    from ckpthooks.components import StateComponent
    from ckpthooks.io.base import CheckpointIO, CheckpointIOSpec, SaveResult

PROJECT_NAME = "ckpthooks"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for hook implementations: ``@hookimpl`` above a function named like a hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------- contributions


@hookspec
def register_state_components(checkpointer: Checkpointer) -> Sequence[StateComponent] | None:
    """Contribute named pieces of state that every checkpoint of ``checkpointer`` carries.

    Called once, when the checkpointer is created, on every rank. Return a sequence of
    :class:`~ckpthooks.StateComponent` objects (or ``None`` for none). Each component's ``name``
    must be unique across all plugins and the names passed to :meth:`Checkpointer.track`.

    The built-in plugin contributes the model, optimizers, LR schedulers, AMP scaler, datamodule,
    callbacks, hyperparameters, loop progress and RNG components through this hook.
    """


@hookspec
def register_policies(checkpointer: Checkpointer) -> Sequence[Callback] | None:
    """Contribute policies: callbacks that decide when to save, how to name and what to keep.

    Called once, when the checkpointer is created, on every rank. Return a sequence of
    :class:`~ckpthooks.Callback` objects (``ModelCheckpoint`` is one). They are appended after the
    callbacks the user passed, in the deterministic plugin order. Two policies with the same
    ``state_key`` are an error.
    """


@hookspec
def register_checkpoint_io() -> Sequence[CheckpointIOSpec] | None:
    """Contribute storage backends, chosen per path or URL.

    Called by the plugin host on any rank that saves, loads or removes a checkpoint, the first time
    it needs a backend for a URL protocol (again after a plugin is registered or unregistered); never
    just to list plugins. Return :class:`~ckpthooks.CheckpointIOSpec` records: a unique
    ``name``, the URL ``protocols`` the backend serves (``"file"``, ``"s3"``, ``"*"`` for any),
    a ``priority`` (the highest priority among those that serve a protocol wins) and a ``factory``
    that builds the :class:`~ckpthooks.CheckpointIO` lazily, so that listing plugins imports nothing
    heavy. A :class:`~ckpthooks.CheckpointIO` passed to the checkpointer overrides this choice.
    """


# --------------------------------------------------------------------------- whole-checkpoint edits


@hookspec
def on_save_checkpoint(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    """Edit the whole checkpoint dict just before it is written.

    Called on every rank, after every state component and every callback's, the model's and the
    datamodule's own ``on_save_checkpoint`` ran, and before the rank guard: so all ranks build the
    same dict. ``checkpointer`` is the :class:`~ckpthooks.Checkpointer` saving. Add, change or
    delete keys in place; the return value is ignored. Whatever you add
    must load with ``torch.load(weights_only=True)`` (plain Python types and tensors).
    """


@hookspec
def on_load_checkpoint(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    """Read or edit the whole checkpoint dict just after it is loaded, before any state is restored.

    Called on every rank, after the model's, the datamodule's and callbacks' own
    ``on_load_checkpoint``. ``checkpointer`` is the :class:`~ckpthooks.Checkpointer` restoring.
    Edit in place (for example to migrate an older layout); the return value is ignored.
    """


# --------------------------------------------------------------------------- storage


@hookspec(firstresult=True)
def save_checkpoint(
    checkpoint: dict[str, Any],
    path: str,
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
) -> SaveResult | None:
    """Write ``checkpoint`` to ``path``; first result wins.

    Called only on the writer rank (global rank 0; every rank for sharded backends). ``checkpoint_io``
    is the backend chosen for ``path``; ``storage_options`` are the fsspec options the checkpointer
    was given (or ``None``). Return a :class:`~ckpthooks.SaveResult` (size and checksum of
    the bytes written) when you handled the write (any other non-``None`` value, such as ``True``,
    when you cannot report them), ``None`` to let the next implementation (finally the chosen
    backend) do it. The runtime writes the commit manifest after this returns.
    """


@hookspec(firstresult=True)
def load_checkpoint(
    path: str,
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
    map_location: Any,
    weights_only: bool,
) -> dict[str, Any] | None:
    """Read the checkpoint at ``path``; first result wins.

    Called on every rank that loads. ``checkpoint_io`` is the backend chosen for ``path``,
    ``storage_options`` the fsspec options (or ``None``) and ``map_location`` is passed on to
    ``torch.load``. Return the checkpoint dict when you handled the read, ``None`` to pass.
    ``weights_only`` is ``True`` unless the user explicitly opted into unpickling arbitrary
    objects; an implementation must honour it.
    """


@hookspec(firstresult=True)
def remove_checkpoint(
    path: str,
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
) -> bool | None:
    """Delete the checkpoint data at ``path``; first result wins.

    Called only on the writer rank, and only after the runtime removed the commit manifest.
    ``checkpoint_io`` is the backend chosen for ``path`` and ``storage_options`` the fsspec options
    (or ``None``). Return ``True`` when you handled the deletion, ``None`` to pass.
    """
