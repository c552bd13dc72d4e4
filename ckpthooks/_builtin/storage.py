"""Built-in plugin: the default storage backend and the last-resort storage hook implementations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ckpthooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from ckpthooks._io.base import CheckpointIO, CheckpointIOSpec, SaveResult
    from ckpthooks._io.hashing import HashingWriter


def _torch_io() -> CheckpointIO:
    from ckpthooks._io.torch_io import TorchCheckpointIO

    return TorchCheckpointIO()


@hookimpl
def register_checkpoint_io() -> Sequence[CheckpointIOSpec]:
    from ckpthooks._io.base import CheckpointIOSpec

    return [
        CheckpointIOSpec(
            name="torch",
            protocols=("*",),
            factory=_torch_io,
            priority=0,
            description="torch.save/torch.load over fsspec (local, memory://, s3://, ...)",
        )
    ]


@hookimpl(trylast=True)
def save_checkpoint(
    checkpoint: dict[str, Any],
    path: str,
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
) -> SaveResult | bool:
    result = checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)
    # a first-result hook needs a non-None value even when a Lightning-style backend returns None
    return result if result is not None else False


@hookimpl(trylast=True)
def load_checkpoint(
    path: str,
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
    map_location: Any,
    weights_only: bool,
) -> dict[str, Any]:
    return checkpoint_io.load_checkpoint(
        path, map_location=map_location, storage_options=storage_options, weights_only=weights_only
    )


@hookimpl(trylast=True)
def write_checkpoint_bytes(
    path: str,
    serialize: Callable[[HashingWriter], object],
    storage_options: Mapping[str, Any] | None,
    checkpoint_io: CheckpointIO,
    checksum_algorithm: str | None,
) -> SaveResult:
    result = checkpoint_io.write_bytes(path, serialize, storage_options, checksum_algorithm=checksum_algorithm)
    if result is not None:
        return result
    from ckpthooks._io.writing import write_durably

    return write_durably(path, serialize, storage_options, checksum_algorithm=checksum_algorithm)


@hookimpl(trylast=True)
def remove_checkpoint(
    path: str, storage_options: Mapping[str, Any] | None, checkpoint_io: CheckpointIO
) -> bool:
    checkpoint_io.remove_checkpoint(path, storage_options=storage_options)
    return True
