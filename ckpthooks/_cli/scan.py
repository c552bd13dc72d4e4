"""Read what a checkpoint file holds without running any of its code, and without torch.

* ``torch.save`` zip files: only the ``data.pkl`` record is read (a few kilobytes, also from a
  remote URL: the zip's index says where it is) and unpickled by :class:`InertUnpickler`, which never
  imports a module named in the file and never calls anything it names. Tensors become
  :class:`TensorInfo` records sized from the zip's storage records; every other global becomes an
  inert :class:`Opaque` placeholder, and its name is reported.
* safetensors files: the JSON header is parsed (the tensors' bytes are never read). A
  ``ckpthooks-safetensors`` checkpoint keeps its structure as JSON in the header; it is decoded here
  without the plugin.

The result is plain Python data with :class:`TensorInfo` leaves, for ``ckpthooks inspect``.
"""

from __future__ import annotations

import codecs
import collections
import io
import json
import math
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

ZIP_MAGIC = b"PK\x03\x04"
#: The largest safetensors header safetensors itself accepts.
MAX_SAFETENSORS_HEADER = 100_000_000
#: The largest ``data.pkl`` read: the structure of a checkpoint, never its tensors' bytes.
MAX_PICKLE = 512 * 1024 * 1024

# torch storage class name -> (dtype name, element size)
_STORAGE_TYPES: dict[str, tuple[str, int]] = {
    "DoubleStorage": ("float64", 8),
    "FloatStorage": ("float32", 4),
    "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
    "ComplexDoubleStorage": ("complex128", 16),
    "ComplexFloatStorage": ("complex64", 8),
    "QUInt8Storage": ("quint8", 1),
    "QInt8Storage": ("qint8", 1),
    "QInt32Storage": ("qint32", 4),
    "UntypedStorage": ("uint8", 1),
}
# dtype name -> element size, for dtypes pickled by name (``torch.float8_e4m3fn``) and safetensors codes
_DTYPE_SIZES: dict[str, int] = {
    **{dtype: size for dtype, size in _STORAGE_TYPES.values()},
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "complex32": 4,
}
_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}  # fmt: skip
_BUILTINS = {
    "set": set,
    "frozenset": frozenset,
    "tuple": tuple,
    "list": list,
    "dict": dict,
    "complex": complex,
    "bytearray": bytearray,
    "bytes": bytes,
    "int": int,
    "float": float,
    "bool": bool,
    "str": str,
    "slice": slice,
}


class ScanError(ValueError):
    """The bytes are not a checkpoint this module can read."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the file describes it: never materialized."""

    dtype: str
    shape: tuple[int, ...]
    storage: str  # identifies the storage record: tensors sharing it share bytes
    storage_nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * _DTYPE_SIZES.get(self.dtype, 1)

    def __str__(self) -> str:
        return f"tensor {self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class DtypeRef:
    name: str

    def __str__(self) -> str:
        return f"torch.{self.name}"


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    nbytes: int


class Opaque:
    """Stands for an object of a class the file names but this reader does not trust.

    Nothing of the real class is imported or run: the constructor arguments, the state, and the
    items a list- or dict-like class received are only recorded.
    """

    global_name = "?"
    args: tuple[Any, ...]
    state: Any
    items: list[Any]
    mapping: dict[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
        self = super().__new__(cls)
        self.args = args
        self.state = None
        self.items = []
        self.mapping = {}
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Opaque:
        return _opaque_value(f"{self.global_name}(...)")  # e.g. getattr(cls, name) called: still inert

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.mapping[key] = value

    def __repr__(self) -> str:
        return f"<{self.global_name}>"


@dataclass
class Scan:
    """What :func:`scan_file` found."""

    container: str  # "torch-zip" | "safetensors"
    obj: Any
    size: int
    unsafe_globals: list[str] = field(default_factory=list)
    safetensors_metadata: dict[str, str] | None = None


class InertUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` ``data.pkl`` without importing or calling anything it names.

    The handful of globals ``torch.save`` itself writes (``collections.OrderedDict``, builtin
    containers, torch's tensor rebuild functions, storage classes, dtypes, ``torch.Size``,
    ``torch.device``) map to functions of this module that build plain records. Every other
    global becomes a fresh :class:`Opaque` subclass, named in :attr:`unsafe_globals`.
    """

    def __init__(self, handle: IO[bytes], storage_sizes: Mapping[str, int]) -> None:
        super().__init__(handle)
        self.storage_sizes = storage_sizes
        self.unsafe_globals: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "_codecs" and name == "encode":
            return _encode
        if module == "torch._utils":
            if name == "_rebuild_tensor_v2":
                return _rebuild_tensor
            if name == "_rebuild_tensor_v3":
                return _rebuild_tensor_v3
            if name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
                return _rebuild_parameter
        if module in ("torch", "torch.storage"):
            if name in _STORAGE_TYPES:
                return _StorageType(*_STORAGE_TYPES[name])
            if name == "Size":
                return _size
            if name == "device":
                return _device
            if name in _DTYPE_SIZES:
                return DtypeRef(name)
        qualified = f"{module}.{name}"
        if qualified not in self.unsafe_globals:
            self.unsafe_globals.append(qualified)
        return type(name, (Opaque,), {"global_name": qualified, "__module__": "ckpthooks._cli.scan.opaque"})

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise ScanError(f"an unknown persistent id in the pickle: {pid!r}"[:200])
        storage_type, key = pid[1], str(pid[2])
        if isinstance(storage_type, _StorageType):
            dtype, element = storage_type.dtype, storage_type.element_size
        else:
            dtype, element = "uint8", 1
        recorded = self.storage_sizes.get(key)
        nbytes = recorded if recorded is not None else _int(pid[4]) * element
        return _StorageRef(key, dtype, nbytes)


@dataclass(frozen=True)
class _StorageType:
    dtype: str
    element_size: int


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _shape(size: Any) -> tuple[int, ...]:
    if isinstance(size, (tuple, list)):
        return tuple(_int(s) for s in size)
    return ()


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *rest: Any) -> Any:
    if not isinstance(storage, _StorageRef):
        return _opaque_value("torch._utils._rebuild_tensor_v2")
    return TensorInfo(storage.dtype, _shape(size), storage.key, storage.nbytes)


def _rebuild_tensor_v3(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any,
                       dtype: Any = None, *rest: Any) -> Any:  # fmt: skip
    if not isinstance(storage, _StorageRef):
        return _opaque_value("torch._utils._rebuild_tensor_v3")
    name = dtype.name if isinstance(dtype, DtypeRef) else storage.dtype
    return TensorInfo(name, _shape(size), storage.key, storage.nbytes)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _size(values: Any = ()) -> tuple[int, ...]:
    return _shape(values)


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


def _encode(text: Any, encoding: str = "utf-8", *rest: Any) -> Any:
    if isinstance(text, str) and encoding in ("latin1", "latin-1", "utf-8", "utf8"):
        return codecs.encode(text, encoding)
    return _opaque_value("_codecs.encode")


def _opaque_value(name: str) -> Opaque:
    kind: type[Opaque] = type(name.rsplit(".", 1)[-1], (Opaque,), {"global_name": name})
    return kind()


# --------------------------------------------------------------------------- files


def sniff(head: bytes) -> str:
    """The container a file's first bytes announce: torch-zip, safetensors, torch-legacy or unknown."""
    if head.startswith(ZIP_MAGIC):
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= MAX_SAFETENSORS_HEADER:
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-legacy"  # a pickle protocol header: torch's format before 1.6, or a bare pickle
    return "unknown"


def scan_file(handle: IO[bytes], size: int) -> Scan:
    """Scan an open, seekable binary file."""
    head = handle.read(16)
    handle.seek(0)
    container = sniff(head)
    if container == "torch-zip":
        return _scan_zip(handle, size)
    if container == "safetensors":
        return _scan_safetensors(handle, size)
    raise ScanError(container)


def _scan_zip(handle: IO[bytes], size: int) -> Scan:
    try:
        archive = zipfile.ZipFile(handle)
    except zipfile.BadZipFile as exc:
        raise ScanError(f"a damaged zip archive ({exc})") from exc
    names = archive.namelist()
    pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
    if not pickles:
        raise ScanError("a zip archive without data.pkl: not a torch.save file")
    prefix = pickles[0][: -len("data.pkl")]
    sizes = {
        info.filename[len(prefix) + len("data/") :]: info.file_size
        for info in archive.infolist()
        if info.filename.startswith(prefix + "data/")
    }
    record = archive.getinfo(pickles[0])
    if record.file_size > MAX_PICKLE:
        raise ScanError(f"its data.pkl is {record.file_size} bytes, more than a checkpoint's structure needs")
    unpickler = InertUnpickler(io.BytesIO(_read_record(archive, handle, record)), sizes)
    try:
        obj = unpickler.load()
    except ScanError:
        raise
    except Exception as exc:  # a malformed pickle: nothing was executed either way
        raise ScanError(f"its data.pkl is not a readable pickle ({type(exc).__name__}: {exc})") from exc
    return Scan("torch-zip", obj, size, unsafe_globals=unpickler.unsafe_globals)


def _read_record(archive: zipfile.ZipFile, handle: IO[bytes], record: zipfile.ZipInfo) -> bytes:
    """The bytes of one record. torch stores records uncompressed, and ckpthooks' saves leave out
    their CRC-32 (written as 0; ckpthooks' checksum covers the file): such a record is read straight
    from the archive, since ``zipfile`` would reject the CRC."""
    if record.CRC != 0 or record.compress_type != zipfile.ZIP_STORED:
        return archive.read(record)
    handle.seek(record.header_offset)
    local = handle.read(30)  # the local file header
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise ScanError(f"a damaged zip archive (no local header for {record.filename})")
    name_length = int.from_bytes(local[26:28], "little")
    extra_length = int.from_bytes(local[28:30], "little")
    handle.seek(record.header_offset + 30 + name_length + extra_length)
    data = handle.read(record.compress_size)
    if len(data) != record.compress_size:
        raise ScanError(f"a damaged zip archive ({record.filename} is cut short)")
    return data


def _scan_safetensors(handle: IO[bytes], size: int) -> Scan:
    length = int.from_bytes(handle.read(8), "little")
    raw = handle.read(length)
    if len(raw) != length:
        raise ScanError("a safetensors file that ends inside its header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScanError(f"a safetensors header that is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise ScanError("a safetensors header that is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        metadata = {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise ScanError(f"a safetensors entry {name!r} that is not an object")
        offsets = entry.get("data_offsets") or [0, 0]
        code = str(entry.get("dtype"))
        tensors[name] = TensorInfo(
            _SAFETENSORS_DTYPES.get(code, code.lower()),
            _shape(entry.get("shape")),
            name,
            _int(offsets[1]) - _int(offsets[0]) if len(offsets) == 2 else 0,
        )
    structure = metadata.get("ckpthooks.structure")
    obj: Any = dict(tensors)
    if metadata.get("ckpthooks.format") == "safetensors-checkpoint" and isinstance(structure, str):
        try:
            obj = _decode_structure(json.loads(structure), tensors)
        except (ValueError, KeyError, TypeError) as exc:
            raise ScanError(f"a ckpthooks-safetensors file with a damaged structure ({exc})") from exc
    return Scan(
        "safetensors",
        obj,
        size,
        safetensors_metadata={str(k): str(v) for k, v in metadata.items() if k != "ckpthooks.structure"},
    )


def _decode_structure(value: Any, tensors: Mapping[str, TensorInfo]) -> Any:
    """The ckpthooks-safetensors plugin's JSON structure as plain values with :class:`TensorInfo` leaves."""
    if isinstance(value, list):
        return [_decode_structure(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    tag = value.get("$")
    if tag is None:
        return {key: _decode_structure(item, tensors) for key, item in value.items()}
    if tag == "tensor":
        stored = tensors[value["name"]]
        shape = value.get("shape")
        dtype = value.get("dtype")
        return TensorInfo(
            str(dtype).removeprefix("torch.") if dtype else stored.dtype,
            _shape(shape) if shape is not None else stored.shape,
            stored.storage,
            stored.storage_nbytes,
        )
    if tag in ("dict", "odict"):
        return {_hashable(_decode_structure(k, tensors)): _decode_structure(v, tensors) for k, v in value["items"]}
    if tag in ("tuple", "set"):
        return [_decode_structure(item, tensors) for item in value["v"]]
    if tag == "float":
        return float(value["v"])
    if tag in ("bytes", "bytearray"):
        return f"<{tag}>"
    if tag == "complex":
        return complex(*value["v"])
    if tag == "size":
        return _shape(value["v"])
    if tag == "dtype":
        return DtypeRef(str(value["v"]).removeprefix("torch."))
    return str(value.get("v"))


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key
