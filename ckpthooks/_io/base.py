"""The storage backend interface, shaped like Lightning's ``CheckpointIO``."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._io.hashing import HashingWriter


@dataclass(frozen=True)
class SaveResult:
    """What a backend reports about the bytes it wrote; recorded in the commit manifest.

    ``checksum`` is ``None`` when the backend cannot compute one while writing; the manifest then
    records the size only.
    """

    size: int
    checksum: str | None = None
    algorithm: str | None = None


class CheckpointIO(ABC):
    """Moves a checkpoint dict to and from storage.

    The three methods have the signatures of Lightning's ``CheckpointIO`` (plus ``storage_options``
    on load and remove), so a Lightning CheckpointIO subclass ports by changing its base class.
    ``save_checkpoint`` may return a :class:`SaveResult`; returning ``None`` (as Lightning's do) is
    accepted, and the runtime then records the size it finds on storage.

    Under ``torch.distributed`` the runtime calls ``save_checkpoint`` on the writer rank only (global
    rank 0), with the checkpoint every rank built alike. A backend for sharded state sets
    :attr:`collective`: then every rank calls ``save_checkpoint`` with its own checkpoint dict (its
    shards) and ``load_checkpoint`` at the same point, and the backend coordinates the ranks itself.
    """

    #: ``True`` for a backend whose saves and loads are collective: every rank of the process group
    #: calls ``save_checkpoint`` (each writing its own part, the backend returning the
    #: :class:`SaveResult` on rank 0 and anything on the others) and ``load_checkpoint``, at the same
    #: point. The runtime keeps an existing committed checkpoint at the path aside before the save,
    #: and rank 0 writes the commit manifest only after every rank reported success; an error on any
    #: rank raises on every rank. ``remove_checkpoint`` is still called on rank 0 only (a
    #: checkpoint may be a folder: remove it whole). The ``ckpthooks-dcp`` plugin's backend is one.
    collective: bool = False

    #: ``True`` for a backend that loads a local copy of a checkpoint's bytes exactly as it loads the
    #: checkpoint where it is stored. The runtime then loads a remote checkpoint from one download:
    #: it copies the object into a local temporary file, checks the copy against the manifest and
    #: loads the copy (see :mod:`ckpthooks._io.staging`), instead of reading the object once to
    #: verify it and once more to load it. ``False`` (the default) for backends that read remote
    #: paths their own way; the built-in torch backend and the safetensors and XLA plugins set it.
    loads_from_local_copy: bool = False

    @abstractmethod
    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SaveResult | None:
        """Write ``checkpoint`` to ``path`` durably (the data must survive a crash once this returns)."""

    @abstractmethod
    def load_checkpoint(
        self,
        path: str,
        map_location: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        """Read the checkpoint dict at ``path``."""

    @abstractmethod
    def remove_checkpoint(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        """Delete the checkpoint at ``path`` (a missing file is not an error)."""

    def write_bytes(
        self,
        path: str,
        serialize: Callable[[HashingWriter], object],
        storage_options: Mapping[str, Any] | None = None,
        *,
        checksum_algorithm: str | None = None,
    ) -> SaveResult | None:
        """Write bytes that are already serialized (``ckpthooks copy`` and ``convert`` moving a
        committed file) to ``path``: ``serialize(writer)`` writes them, in order, into a
        :class:`~ckpthooks.plugin.HashingWriter` of ``checksum_algorithm`` on top of the file.

        Return ``None`` (the default) to let ckpthooks write them durably
        (:func:`~ckpthooks.plugin.write_durably`: a temporary sibling, fsync and rename locally; a
        streamed upload elsewhere); a backend for storage of its own overrides this and returns
        the size and checksum of what it wrote."""
        return None

    def teardown(self) -> None:  # noqa: B027 - optional hook with a default
        """Release resources; called when the owning checkpointer closes."""


@dataclass(frozen=True)
class CheckpointIOSpec:
    """A storage backend contributed through the ``register_checkpoint_io`` hook.

    ``factory`` builds the backend on first use, so that listing plugins stays cheap.
    """

    name: str
    protocols: tuple[str, ...]
    factory: Callable[[], CheckpointIO] = field(compare=False)
    priority: int = 0
    description: str = ""


_restoring: ContextVar[Checkpointer | None] = ContextVar("ckpthooks_restoring", default=None)


def restoring_checkpointer() -> Checkpointer | None:
    """The :class:`~ckpthooks.Checkpointer` whose :meth:`~ckpthooks.Checkpointer.restore` is reading
    a checkpoint right now, or ``None`` (``load_from_checkpoint``, the command line, a bare
    :class:`~ckpthooks._store.CheckpointStore`).

    For backends that load in place, as ``torch.distributed.checkpoint`` does: the live model and
    optimizers tell which shards this rank needs. A backend must not change them; it returns the
    checkpoint dict as usual and the restore puts the state back.
    """
    return _restoring.get()


@contextlib.contextmanager
def restoring(checkpointer: Checkpointer) -> Iterator[None]:
    """Make :func:`restoring_checkpointer` return ``checkpointer`` inside the ``with`` block."""
    token = _restoring.set(checkpointer)
    try:
        yield
    finally:
        _restoring.reset(token)
