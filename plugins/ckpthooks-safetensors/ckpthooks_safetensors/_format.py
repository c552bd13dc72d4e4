"""The safetensors file layout, written as a stream and read back (as a stream) without safetensors' help.

A safetensors file is: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON header
(padded with spaces), then the tensors' bytes back to back. The header maps each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the header),
plus an optional ``"__metadata__"`` str->str dict. Tensors are ordered by decreasing element size,
so with the header padded to 8 bytes every tensor starts aligned for its dtype (as safetensors'
own writer does).

Writing here streams: the header is computed from shapes and dtypes alone, then each tensor's bytes
are written straight from its memory. Only a tensor that is not contiguous or not on the CPU is
copied first, one at a time.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

import torch

#: The largest header safetensors itself accepts.
MAX_HEADER_SIZE = 100_000_000
CHUNK = 8 * 1024 * 1024


class FormatError(ValueError):
    """The bytes are not a well-formed safetensors file."""


def _dtype_codes() -> dict[torch.dtype, str]:
    codes = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
        torch.complex64: "C64",
    }
    for name, code in (
        ("uint64", "U64"),
        ("uint32", "U32"),
        ("uint16", "U16"),
        ("float8_e4m3fn", "F8_E4M3"),
        ("float8_e5m2", "F8_E5M2"),
    ):
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):
            codes[dtype] = code
    return codes


#: torch dtype -> safetensors dtype code, for the dtypes both know. Tensors of other dtypes are
#: stored as their raw bytes (``U8``) and viewed back as their dtype when loading.
DTYPE_CODES = _dtype_codes()
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


class Writer(Protocol):
    def write(self, data: Any, /) -> int: ...


@dataclass
class StoredTensor:
    """One entry of the file: a name, the tensor it comes from and how it is stored."""

    name: str
    tensor: torch.Tensor
    code: str
    shape: list[int]
    nbytes: int
    alignment: int


def stored_tensor(name: str, tensor: torch.Tensor) -> tuple[StoredTensor, bool]:
    """How ``tensor`` is stored; the flag says whether it is stored as raw bytes (dtype unknown to
    safetensors)."""
    nbytes = tensor.numel() * tensor.element_size()
    code = DTYPE_CODES.get(tensor.dtype)
    if code is None:
        return StoredTensor(name, tensor, "U8", [nbytes], nbytes, tensor.element_size()), True
    return StoredTensor(name, tensor, code, list(tensor.shape), nbytes, tensor.element_size()), False


def ordered(entries: list[StoredTensor]) -> list[StoredTensor]:
    """File order: largest elements first (stable otherwise), so every tensor stays aligned."""
    return sorted(entries, key=lambda entry: -entry.alignment)


def encode_header(entries: list[StoredTensor], metadata: dict[str, str]) -> bytes:
    """The length prefix and the padded JSON header for ``entries`` (already in file order)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.code,
            "shape": entry.shape,
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("ascii")
    raw += b" " * (-(8 + len(raw)) % 8)
    if len(raw) > MAX_HEADER_SIZE:
        raise FormatError(
            f"the checkpoint's structure needs a {len(raw)}-byte safetensors header; safetensors "
            f"reads at most {MAX_HEADER_SIZE} bytes"
        )
    return len(raw).to_bytes(8, "little") + raw


def tensor_chunks(tensor: torch.Tensor) -> Iterator[memoryview]:
    """The bytes of ``tensor`` in row-major order, without copying a contiguous CPU tensor."""
    data = tensor.detach()
    if data.device.type != "cpu":
        data = data.to("cpu")
    data = data.resolve_conj().resolve_neg()
    if not data.is_contiguous():
        data = data.contiguous()
    nbytes = data.numel() * data.element_size()
    if nbytes == 0:
        return
    # a view of the tensor's memory; ``data`` stays referenced while the chunks are written
    view = memoryview((ctypes.c_ubyte * nbytes).from_address(data.data_ptr())).cast("B")
    for start in range(0, nbytes, CHUNK):
        yield view[start : start + CHUNK]


def write_file(writer: Writer, entries: list[StoredTensor], metadata: dict[str, str]) -> int:
    """Write a whole safetensors file to ``writer``; returns the number of bytes."""
    prefix = encode_header(entries, metadata)
    writer.write(prefix)
    total = len(prefix)
    for entry in entries:
        written = 0
        for chunk in tensor_chunks(entry.tensor):
            writer.write(chunk)
            written += chunk.nbytes
        if written != entry.nbytes:  # the tensor changed size while it was being written
            raise RuntimeError(f"tensor {entry.name!r} had {written} bytes, {entry.nbytes} were expected")
        total += written
    return total


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class HeaderEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def _read_exact(handle: IO[bytes], size: int, what: str) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = handle.read(min(remaining, CHUNK))
        if not chunk:
            raise FormatError(f"the file ends inside {what} ({size - remaining} of {size} bytes)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise FormatError(f"the header holds the non-JSON constant {name}")


def read_header(handle: IO[bytes]) -> tuple[dict[str, str], list[HeaderEntry]]:
    """Read and check the header at the start of ``handle``; returns the metadata and the tensor
    entries in file order. Raises :class:`FormatError` for anything malformed."""
    size = int.from_bytes(_read_exact(handle, 8, "the header length"), "little")
    if size > MAX_HEADER_SIZE:
        raise FormatError(f"the header would be {size} bytes long, more than safetensors allows")
    raw = _read_exact(handle, size, "the header")
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise FormatError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise FormatError("the header's __metadata__ is not a dict of strings")
    entries = sorted((_entry(name, info) for name, info in header.items()), key=lambda e: (e.begin, e.end))
    position = 0
    for entry in entries:
        if entry.begin != position:
            raise FormatError(f"tensor {entry.name!r} does not start where the previous one ends")
        position = entry.end
    return metadata, entries


def _entry(name: str, info: Any) -> HeaderEntry:
    if not isinstance(info, dict):
        raise FormatError(f"the header entry of {name!r} is not an object")
    dtype = CODE_DTYPES.get(info.get("dtype"))  # type: ignore[arg-type]
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if dtype is None:
        raise FormatError(f"tensor {name!r} has the unknown dtype {info.get('dtype')!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise FormatError(f"tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(n) is int for n in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise FormatError(f"tensor {name!r} has invalid data offsets {offsets!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
        raise FormatError(f"tensor {name!r}: its offsets do not match its shape and dtype")
    return HeaderEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def read_tensors(handle: IO[bytes], entries: list[HeaderEntry]) -> dict[str, torch.Tensor]:
    """Read the tensors that follow the header, in file order; each is one fresh CPU tensor (the
    file is never held in memory whole). The file must end right after the last tensor."""
    tensors: dict[str, torch.Tensor] = {}
    for entry in entries:
        size = entry.end - entry.begin
        if size == 0:
            tensors[entry.name] = torch.empty(entry.shape, dtype=entry.dtype)
            continue
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        while filled < size:
            count = handle.readinto(view[filled:])  # type: ignore[attr-defined]
            if not count:
                raise FormatError(f"the file ends inside tensor {entry.name!r}")
            filled += count
        tensors[entry.name] = torch.frombuffer(buffer, dtype=torch.uint8).view(entry.dtype).reshape(entry.shape)
    if handle.read(1):
        raise FormatError("there are bytes after the last tensor")
    return tensors


def map_tensors(handle: IO[bytes], entries: list[HeaderEntry]) -> dict[str, torch.Tensor]:
    """Map the tensors that follow the header copy-on-write: nothing is read until a tensor is used,
    and writing to a tensor never reaches the file. ``handle`` must be a local file positioned right
    after the header; the mapping holds that file (its inode), so a checkpoint replaced at the same
    path meanwhile cannot mix into what was loaded. The file must end right after the last tensor."""
    start = handle.tell()
    data_size = entries[-1].end if entries else 0
    file_size = os.fstat(handle.fileno()).st_size
    if file_size < start + data_size:
        raise FormatError(f"the file ends inside the tensors ({file_size - start} of {data_size} bytes)")
    if file_size > start + data_size:
        raise FormatError("there are bytes after the last tensor")
    tensors: dict[str, torch.Tensor] = {}
    mapped = mmap.mmap(handle.fileno(), file_size, access=mmap.ACCESS_COPY) if data_size else None
    for entry in entries:
        count = math.prod(entry.shape)
        if entry.end == entry.begin or mapped is None:
            tensors[entry.name] = torch.empty(entry.shape, dtype=entry.dtype)
            continue
        flat = torch.frombuffer(mapped, dtype=entry.dtype, count=count, offset=start + entry.begin)
        tensors[entry.name] = flat.reshape(entry.shape)
    return tensors
