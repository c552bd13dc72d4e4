"""The storage backend interface, shaped like Lightning's ``CheckpointIO``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


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
    """

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
