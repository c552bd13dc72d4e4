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
  are called once per :class:`~ckpthooks.Checkpointer` (storage backends: once per protocol;
  command-line commands: once per ``ckpthooks`` invocation that needs them);
  their results are combined in a deterministic order (built-in plugins first, then external
  plugins ordered by name) and two contributions of the same name raise
  :class:`~ckpthooks.exceptions.DuplicateContributionError` naming both plugins.
* Storage hooks (``save_checkpoint``, ``load_checkpoint``, ``write_checkpoint_bytes``,
  ``remove_checkpoint``) stop at the first
  implementation that returns something other than ``None``; the built-in implementation runs last
  and hands the work to the :class:`~ckpthooks.CheckpointIO` chosen for the path.
* ``distributed_context`` stops at the first result too; no built-in plugin implements it.

This module imports nothing heavy: ``torch`` and the runtime classes appear only for type checking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from ckpthooks._callbacks import Callback
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._components import StateComponent
    from ckpthooks._distributed import DistributedContext
    from ckpthooks._io.base import CheckpointIO, CheckpointIOSpec, SaveResult
    from ckpthooks._io.hashing import HashingWriter

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


@hookspec
def register_cli_commands() -> Sequence[click.Command] | None:
    """Contribute subcommands of the ``ckpthooks`` command line.

    Called in the ``ckpthooks`` process only (no training rank calls it), the first time the
    command line needs a command it does not have built in, or lists its commands (``--help``);
    never for a built-in command such as ``ckpthooks plugins``. Return a sequence of
    :class:`click.Command` objects (a ``click.Group`` is a command too), or ``None``. Each
    command's ``name`` becomes ``ckpthooks <name>``; a built-in command of the same name wins.
    A plugin whose implementation raises, returns something else, or contributes a name another
    plugin already did is reported on stderr and its commands are left out; the other commands
    still work (``CKPTHOOKS_STRICT_PLUGINS=1`` makes it an error). Import heavy libraries such as
    torch inside the command function, not at module level: ``ckpthooks --help`` imports every
    plugin.
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

    Called only on the writer rank (global rank 0), with the checkpoint every rank built alike; or,
    when the backend chosen for ``path`` is collective (``checkpoint_io.collective``, a sharded
    backend such as the ``ckpthooks-dcp`` plugin's), on every rank at the same point, each with its
    own checkpoint dict (its shards): an implementation must then take part on every rank or on
    none, and return the :class:`~ckpthooks.SaveResult` on rank 0. ``checkpoint_io``
    is the backend chosen for ``path``; ``storage_options`` are the fsspec options the checkpointer
    was given (or ``None``). Return a :class:`~ckpthooks.SaveResult` (size and checksum of
    the bytes written) when you handled the write (any other non-``None`` value, such as ``True``,
    when you cannot report them), ``None`` to let the next implementation (finally the chosen
    backend) do it. The runtime writes the commit manifest after this returns (on rank 0, after
    every rank reported success, for a collective backend).
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

    Called on every rank that loads (:meth:`~ckpthooks.Checkpointer.restore`: every rank, at the
    same point, after rank 0 chose the path and, for a collective backend, after every rank found
    the checkpoint intact). During a restore :func:`ckpthooks._io.base.restoring_checkpointer`
    returns the restoring checkpointer, whose live objects tell an in-place loader (DCP) which
    shards this rank needs. ``checkpoint_io`` is the backend chosen for ``path``,
    ``storage_options`` the fsspec options (or ``None``) and ``map_location`` is passed on to
    ``torch.load``. Return the checkpoint dict when you handled the read, ``None`` to pass.
    ``weights_only`` is ``True`` unless the user explicitly opted into unpickling arbitrary
    objects; an implementation must honour it.
    """


@hookspec(firstresult=True)
def write_checkpoint_bytes(
    path: str,
    serialize: Callable[[HashingWriter], object],
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
    checksum_algorithm: str | None,
) -> SaveResult | None:
    """Write bytes that are already serialized to ``path``; first result wins.

    ``ckpthooks copy`` and ``ckpthooks convert`` call it to put a committed file's bytes at their
    destination, in the command's one process (the writer rank), inside the same commit as a save
    (the manifest is written after this returns). ``serialize(writer)`` writes the bytes, in order,
    into a :class:`~ckpthooks.plugin.HashingWriter` of ``checksum_algorithm`` that you put on top of
    your file. ``checkpoint_io`` is the backend chosen for ``path`` and ``storage_options`` the
    fsspec options of the destination (or ``None``). Return the :class:`~ckpthooks.SaveResult`
    (size and checksum of the bytes written) when you handled the write, ``None`` to pass; the
    built-in implementation, called last, asks ``checkpoint_io.write_bytes`` and else writes
    durably (:func:`~ckpthooks.plugin.write_durably`).
    """


@hookspec(firstresult=True)
def remove_checkpoint(
    path: str,
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
) -> bool | None:
    """Delete the checkpoint data at ``path``; first result wins.

    Called only on the writer rank (also for collective backends), and only after the runtime
    removed the commit manifest. The data may be a folder (a sharded checkpoint): delete it whole.
    ``checkpoint_io`` is the backend chosen for ``path`` and ``storage_options`` the fsspec options
    (or ``None``). Return ``True`` when you handled the deletion, ``None`` to pass.
    """


# --------------------------------------------------------------------------- ranks


@hookspec(firstresult=True)
def distributed_context() -> DistributedContext | None:
    """Supply ranks and collectives for a runtime other than ``torch.distributed``; first result wins.

    Asked by :mod:`ckpthooks._distributed` on any rank that needs its rank, the world size, a
    broadcast or a barrier (the rank guard of every save, the outcome every rank agrees on, policies'
    shared decisions, ``rank_zero_only``), and only while ``torch.distributed`` is not initialized:
    an initialized process group always decides. Return an object with the methods of
    :class:`~ckpthooks._distributed.DistributedContext` (``rank()``, ``world_size()``,
    ``broadcast_object(obj, src)``, ``barrier()``) when your runtime is in use in this process, or
    ``None`` to pass; when every implementation passes, launcher variables such as ``RANK`` decide
    the rank and the run counts as one process. Rank 0 of the context is the only one that writes.

    The plugin host keeps a returned context until a plugin is registered or unregistered, and asks
    again while every implementation returns ``None``; so decide cheaply (look in ``sys.modules``,
    never import a heavy library here) and let the context's methods ask the runtime each time.
    The XLA plugin (``ckpthooks-xla``) implements it with torch_xla's ordinals.
    """
