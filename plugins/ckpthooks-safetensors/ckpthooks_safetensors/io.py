"""``SafetensorsCheckpointIO``: whole checkpoints in one safetensors file, loaded without unpickling."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from ckpthooks import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigurationError,
    CorruptCheckpointError,
)
from ckpthooks.plugin import (
    CheckpointIO,
    SaveResult,
    filesystem,
    fs_path,
    is_local,
    local_path,
    storage_error,
    write_durably,
)

from ckpthooks_safetensors import _format, _structure
from ckpthooks_safetensors._version import FORMAT_VERSION

log = logging.getLogger(__name__)

#: Keys of the safetensors ``__metadata__`` this backend writes.
FORMAT_KEY = "ckpthooks.format"
FORMAT_NAME = "safetensors-checkpoint"
VERSION_KEY = "ckpthooks.format_version"
STRUCTURE_KEY = "ckpthooks.structure"


class UnsupportedStateError(CheckpointError, TypeError):
    """A tensor this backend cannot store: sparse, quantized, on the meta device, or a tensor subclass
    other than ``nn.Parameter``. Convert it (``to_dense()``, ``dequantize()``) or use the torch backend."""


class SafetensorsCheckpointIO(CheckpointIO):
    """Checkpoints as safetensors files: tensors in safetensors' format, the rest as JSON in its header.

    Selected per checkpointer: ``Checkpointer(checkpoint_io=SafetensorsCheckpointIO())``. With the
    plugin installed, any checkpointer (and the ``ckpthooks`` CLI) also *loads* these files, whatever
    backend it writes with.

    Saving streams the header and then every tensor's bytes straight from its memory to a temporary
    sibling file, which is fsynced and renamed over the target (other fsspec URLs: streamed to the
    target object). The extra memory is the header plus one contiguous CPU copy of one tensor at a
    time, only for tensors that are not contiguous or not on the CPU. The checksum is computed while
    writing.

    Loading never unpickles anything, so ``weights_only`` has nothing to refuse: the flag is accepted
    and has no effect. Local files are written with ``O_DIRECT`` where the file system allows it
    (``direct_io=False`` turns it off; see ``ckpthooks.plugin.write_durably``). Local files are
    memory-mapped when loaded: tensors on the CPU are copy-on-write views of
    the file (no copy, and pages are read only when touched). Remote files are read as a stream, one
    tensor at a time.

    Not kept (unlike ``torch.save``): storage shared between *different* views of a tensor (each view
    is stored as its own contiguous copy; the same view stored twice, such as tied weights, is stored
    once and loads as one tensor), and a NaN's sign and payload inside the non-tensor structure.
    """

    loads_from_local_copy = True  # a local copy of a remote file loads like the file

    def __init__(self, checksum_algorithm: str | None = None, direct_io: bool | None = None) -> None:
        if sys.byteorder != "little":
            raise ConfigurationError(
                "the safetensors backend writes tensor bytes as they are in memory: it needs a little-endian machine"
            )
        self.checksum_algorithm = checksum_algorithm
        self.direct_io = direct_io

    # ------------------------------------------------------------------ save

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SaveResult:
        entries, metadata = plan(checkpoint)  # every refusal happens here, before a byte is written
        return write_durably(
            path,
            lambda writer: _format.write_file(writer, entries, metadata),
            storage_options,
            checksum_algorithm=self.checksum_algorithm,
            direct_io=self.direct_io,
        )

    # ------------------------------------------------------------------ load

    def load_checkpoint(
        self,
        path: str,
        map_location: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        del weights_only  # nothing in these files is ever unpickled
        _target_device("cpu", map_location)  # an unsupported map_location fails before any read
        try:
            if is_local(path):
                metadata, tensor_for = _open_local(local_path(path), path)
                return _rebuild(metadata, tensor_for, map_location, path)
            fs = filesystem(path, storage_options)
            with fs.open(fs_path(fs, path), "rb") as handle:
                metadata, entries = _format.read_header(handle)
                _structure_json(metadata, path)  # a foreign file fails before its tensors are read
                tensors = _format.read_tensors(handle, entries)
            return _rebuild(metadata, tensors.get, map_location, path)
        except CheckpointError:
            raise
        except FileNotFoundError as exc:
            raise CheckpointNotFoundError(f"no checkpoint at {path}") from exc
        except PermissionError as exc:
            raise storage_error("read", path, exc) from exc
        except (_format.FormatError, _structure.StructureError, RecursionError) as exc:
            raise _corrupt(path, exc) from exc
        except OSError as exc:
            raise storage_error("read", path, exc) from exc

    # ------------------------------------------------------------------ remove

    def remove_checkpoint(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            if is_local(path):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(local_path(path))
                return
            fs = filesystem(path, storage_options)
            target = fs_path(fs, path)
            if fs.exists(target):
                fs.rm_file(target)
        except OSError as exc:
            raise storage_error("delete", path, exc) from exc


# --------------------------------------------------------------------------- saving: the plan


@dataclass
class _Planner:
    """Collects the tensors while the structure is encoded, each distinct view once."""

    entries: list[_format.StoredTensor] = field(default_factory=list)
    names: set[str] = field(default_factory=lambda: {"__metadata__"})
    seen: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    #: the tensors behind ``seen``'s keys stay referenced, so their addresses stay theirs
    keep: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, tensor: torch.Tensor, path: tuple[str, ...]) -> dict[str, Any]:
        where = "/".join(path) or "the checkpoint"
        _check_supported(tensor, where)
        key = _view_key(tensor)
        if key is not None and key in self.seen:
            return dict(self.seen[key])
        name = self._unique(where)
        entry, raw = _format.stored_tensor(name, tensor)
        reference: dict[str, Any] = {_structure.TAG: "tensor", "name": name}
        if raw:
            reference["dtype"] = str(tensor.dtype).removeprefix("torch.")
            reference["shape"] = list(tensor.shape)
        if tensor.device.type != "cpu":
            reference["device"] = str(tensor.device)
        if tensor.requires_grad:
            reference["requires_grad"] = True
        if type(tensor) is torch.nn.Parameter:
            reference["parameter"] = True
        self.entries.append(entry)
        if key is not None:
            self.seen[key] = reference
            self.keep.append(tensor)
        return dict(reference)

    def _unique(self, name: str) -> str:
        candidate, number = name, 1
        while candidate in self.names:
            candidate, number = f"{name}#{number}", number + 1
        self.names.add(candidate)
        return candidate


def plan(checkpoint: dict[str, Any]) -> tuple[list[_format.StoredTensor], dict[str, str]]:
    """The tensors to write (in file order) and the header metadata holding the structure."""
    if type(checkpoint) is not dict:
        raise UnsupportedStateError(f"a checkpoint is a dict, not a {type(checkpoint).__name__}")
    planner = _Planner()
    structure = _structure.encode(checkpoint, planner)
    metadata = {
        "format": "pt",  # what transformers and other safetensors readers expect of torch tensors
        FORMAT_KEY: FORMAT_NAME,
        VERSION_KEY: str(FORMAT_VERSION),
        STRUCTURE_KEY: json.dumps(structure, separators=(",", ":"), allow_nan=False),
    }
    return _format.ordered(planner.entries), metadata


def _check_supported(tensor: torch.Tensor, where: str) -> None:
    problem = None
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        problem = f"is a {type(tensor).__qualname__} (a tensor subclass)"
    elif tensor.layout != torch.strided:
        problem = f"has the {tensor.layout} layout (call .to_dense())"
    elif tensor.is_quantized:
        problem = "is quantized (call .dequantize())"
    elif tensor.device.type == "meta":
        problem = "is on the meta device and has no data"
    if problem is not None:
        raise UnsupportedStateError(f"{where} {problem}; the safetensors backend stores plain dense tensors")


def _view_key(tensor: torch.Tensor) -> tuple[Any, ...] | None:
    """What makes two tensors the same view of the same memory (``None``: no memory to share)."""
    storage = tensor.untyped_storage()
    if storage.nbytes() == 0 or storage.data_ptr() == 0:
        return None
    return (
        type(tensor),
        tensor.device,
        tensor.dtype,
        storage.data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.requires_grad,
    )


# --------------------------------------------------------------------------- loading


def _open_local(local: str, path: str) -> tuple[dict[str, str], Any]:
    """The metadata of a local file and a function that returns its tensors, memory-mapped.

    Header and tensors come from one open file, so a checkpoint replaced at ``path`` while this runs
    (``last.ckpt`` rewritten by a training run) is read whole, old or new, never a mix of both."""
    if os.path.isdir(local):
        raise CorruptCheckpointError(f"{path} is a folder, not a checkpoint file")
    with open(local, "rb") as handle:
        metadata, entries = _format.read_header(handle)
        _structure_json(metadata, path)  # a foreign file fails before its tensors are mapped
        tensors = _format.map_tensors(handle, entries)
    return metadata, tensors.get


def _structure_json(metadata: Mapping[str, str], path: str) -> str:
    if metadata.get(FORMAT_KEY) != FORMAT_NAME or STRUCTURE_KEY not in metadata:
        raise CorruptCheckpointError(
            f"{path} is a safetensors file of tensors only, not a ckpthooks checkpoint (its header has "
            f"no {STRUCTURE_KEY!r}); load it with safetensors.torch.load_file"
        )
    version = metadata.get(VERSION_KEY, "")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"{path} was written in safetensors-checkpoint format {version!r}; this "
            f"ckpthooks-safetensors reads format {FORMAT_VERSION} and older: upgrade the plugin"
        )
    return metadata[STRUCTURE_KEY]


def _rebuild(metadata: Mapping[str, str], tensor_for: Any, map_location: Any, path: str) -> dict[str, Any]:
    try:
        structure = json.loads(_structure_json(metadata, path), parse_constant=_format._reject_constant)
    except json.JSONDecodeError as exc:
        raise _structure.StructureError(f"the structure is not JSON ({exc})") from exc
    built: dict[str, torch.Tensor] = {}

    def tensor(reference: dict[str, Any]) -> torch.Tensor:
        name = reference["name"]
        if name not in built:
            stored = tensor_for(name)
            if stored is None:
                raise _structure.StructureError(f"the structure refers to a tensor {name!r} the file lacks")
            built[name] = _restore_tensor(stored, reference, map_location)
        return built[name]

    checkpoint = _structure.decode(structure, tensor)
    if type(checkpoint) is not dict:
        raise _structure.StructureError(f"the checkpoint is a {type(checkpoint).__name__}, not a dict")
    return checkpoint


def _restore_tensor(stored: torch.Tensor, reference: dict[str, Any], map_location: Any) -> torch.Tensor:
    result = stored
    if "dtype" in reference:  # stored as raw bytes
        dtype = getattr(torch, str(reference["dtype"]), None)
        shape = reference.get("shape")
        if not isinstance(dtype, torch.dtype) or type(shape) is not list or not all(type(n) is int for n in shape):
            raise _structure.StructureError(f"tensor {reference['name']!r} has an invalid dtype or shape")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if stored.dtype != torch.uint8 or stored.numel() != itemsize * _numel(shape):
            raise _structure.StructureError(f"tensor {reference['name']!r} does not have the bytes of its shape")
        result = stored.view(dtype).reshape(shape) if stored.numel() else torch.empty(shape, dtype=dtype)
    device = _target_device(str(reference.get("device", "cpu")), map_location)
    if result.device != device:
        result = result.to(device)
    if reference.get("parameter") is True:
        return torch.nn.Parameter(result, requires_grad=reference.get("requires_grad") is True)
    if reference.get("requires_grad") is True:
        result.requires_grad_(True)
    return result


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _target_device(saved: str, map_location: Any) -> torch.device:
    """Where a tensor saved on ``saved`` goes, with ``torch.load``'s ``map_location`` meanings."""
    if map_location is None:
        return torch.device(saved)
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    if isinstance(map_location, dict):
        return torch.device(map_location.get(saved, saved))
    raise ConfigurationError(
        "the safetensors backend takes map_location as None, a device, a device string or a dict "
        f"of device strings, not {type(map_location).__name__}"
    )


# --------------------------------------------------------------------------- detection and errors


def looks_like_safetensors(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether the file at ``path`` starts like a safetensors file (reads 9 bytes; never raises)."""
    try:
        if is_local(path):
            # O_NONBLOCK: a FIFO named like a checkpoint must not block here; only regular files are read
            with open(os.open(local_path(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    return False
                start = handle.read(9)
        else:
            fs = filesystem(path, storage_options)
            start = fs.cat_file(fs_path(fs, path), start=0, end=9)
    except Exception:  # missing, a folder, unreachable: the chosen backend reports it
        return False
    if len(start) < 9:
        return False
    size = int.from_bytes(start[:8], "little")
    return 2 <= size <= _format.MAX_HEADER_SIZE and start[8:9] == b"{"


def _corrupt(path: str, exc: BaseException) -> CorruptCheckpointError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CorruptCheckpointError(
        f"{path} is not a readable safetensors checkpoint ({text}); it may be truncated, altered, "
        "or written by another backend (files written with torch.save load with the default backend)"
    )
