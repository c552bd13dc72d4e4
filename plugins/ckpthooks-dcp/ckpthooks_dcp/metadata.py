"""Reading DCP's ``.metadata`` file without unpickling foreign code.

``torch.distributed.checkpoint`` stores a checkpoint's index (tensor shapes, dtypes, chunk layout and
where each chunk sits in the ``.distcp`` files) as a pickle of its ``Metadata`` dataclass, and torch's
own reader loads it with a plain ``pickle.load``: a crafted folder could run arbitrary code while it
is merely opened. :func:`read_metadata` loads it with :class:`MetadataUnpickler`, whose
``find_class`` resolves only an allow-list:

* the dataclasses of ``torch.distributed.checkpoint.metadata`` (``Metadata``,
  ``TensorStorageMetadata``, ``BytesStorageMetadata``, ``ChunkStorageMetadata``,
  ``TensorProperties``, ``MetadataIndex``, ``StorageMeta`` and the memory-format enum) and
  ``torch.distributed.checkpoint.filesystem._StorageInfo``;
* ``torch.Size``, the ``torch`` dtypes, and ``torch.serialization._get_layout`` (a lookup of a
  layout by name);
* ``pathlib`` path classes (DCP records the folder it was written to);
* ``collections.OrderedDict``.

Anything else (``os.system``, ``builtins.eval``, any other class or function) raises
:class:`~ckpthooks.exceptions.UnsafeCheckpointError` before it is resolved. Calling an allowed
class only builds metadata records, tuples, paths or dtypes.

What remains pickled in a DCP folder: the ``.metadata`` index (read as above) and each non-tensor
entry. This plugin writes a single non-tensor entry, the checkpoint's structure (see
:mod:`ckpthooks_dcp.layout`), and reads it with ``torch.load(weights_only=...)``, like a ``.ckpt``
file (torch's own DCP loader uses ``weights_only=False`` there). Tensors are read by DCP itself with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

from ckpthooks import CorruptCheckpointError, UnsafeCheckpointError

#: Name of DCP's index file inside a checkpoint folder.
METADATA_FILE = ".metadata"

_DCP_METADATA_CLASSES = frozenset(
    {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    }
)
_PATH_CLASSES = frozenset({"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"})


def _allowed(module: str, name: str) -> Any | None:
    """The object ``module.name`` stands for when it is on the allow-list, else ``None``."""
    import torch

    if module == "torch.distributed.checkpoint.metadata" and name in _DCP_METADATA_CLASSES:
        from torch.distributed.checkpoint import metadata

        return getattr(metadata, name, None)
    if module == "torch.distributed.checkpoint.filesystem" and name == "_StorageInfo":
        from torch.distributed.checkpoint import filesystem

        return getattr(filesystem, name, None)
    if module == "torch" and name == "Size":
        return torch.Size
    if module == "torch":
        value = getattr(torch, name, None)
        return value if isinstance(value, torch.dtype) else None
    if module == "torch.serialization" and name == "_get_layout":
        return getattr(torch.serialization, name, None)
    if module == "pathlib" and name in _PATH_CLASSES:
        import pathlib

        return getattr(pathlib, name, None)
    if module == "collections" and name == "OrderedDict":
        import collections

        return collections.OrderedDict
    return None


class MetadataUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals DCP's metadata needs."""

    def find_class(self, module: str, name: str) -> Any:
        value = _allowed(module, name)
        if value is None:
            raise UnsafeCheckpointError(
                f"the DCP metadata names {module}.{name}, which is not a DCP metadata type: loading "
                "it could run arbitrary code, so it is refused. This folder was not written by "
                "torch.distributed.checkpoint, or it was altered."
            )
        return value

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError("the DCP metadata holds persistent references, which DCP never writes")


def loads_metadata(data: bytes, source: str = "the DCP metadata") -> Any:
    """Unpickle DCP metadata bytes with :class:`MetadataUnpickler`."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = MetadataUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        raise CorruptCheckpointError(f"{source} is not readable DCP metadata ({type(exc).__name__}: {exc})") from exc
    if not isinstance(metadata, Metadata):
        raise CorruptCheckpointError(f"{source} holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


def read_metadata(folder: str) -> Any:
    """The ``Metadata`` of the DCP checkpoint in ``folder``, read with the restricted unpickler."""
    path = os.path.join(folder, METADATA_FILE)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise CorruptCheckpointError(
            f"{folder} has no {METADATA_FILE}: it is not a complete torch.distributed.checkpoint folder"
        ) from exc
    return loads_metadata(data, source=path)
