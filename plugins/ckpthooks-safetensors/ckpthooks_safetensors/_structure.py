"""The checkpoint around the tensors, as JSON: every weights-only type round-trips exactly.

JSON is used as is where it is exact; every other value becomes a tagged object ``{"$": tag, ...}``:

=====================================  ===========================================================
Python value                           JSON
=====================================  ===========================================================
``None``, ``bool``, ``str``, ``int``   itself (integers of any size)
finite ``float``                       itself (shortest repr: read back bit for bit, ``-0.0`` too)
``nan``, ``inf``, ``-inf``             ``{"$": "float", "v": "nan"}`` (a NaN's sign and payload are
                                       not kept)
``list``                               an array
``dict`` with ``str`` keys, no ``"$"``  an object
any other ``dict``, ``OrderedDict``    ``{"$": "dict" | "odict", "items": [[key, value], ...]}``,
                                       plus ``"attrs"`` for an OrderedDict's attributes (the
                                       ``_metadata`` of a ``state_dict``)
``tuple``, ``set``                     ``{"$": "tuple" | "set", "v": [...]}``
``bytes``, ``bytearray``               ``{"$": "bytes" | "bytearray", "v": "<base64>"}``
``complex``                            ``{"$": "complex", "v": [real, imag]}``
``torch.Size``, dtype, device          ``{"$": "size" | "dtype" | "device", "v": ...}``
a tensor                               ``{"$": "tensor", "name": ...}``: a reference to a tensor
                                       of the safetensors file
=====================================  ===========================================================

Types are matched exactly (``type(x) is int``), so a subclass (an ``IntEnum``, a ``defaultdict``)
is refused rather than silently turned into its base type. Decoding builds only the types above;
an unknown tag is an error, never a lookup.
"""

from __future__ import annotations

import base64
import collections
import math
from collections.abc import Callable
from typing import Any

import torch
from ckpthooks import CheckpointError, UnsafeStateError

TAG = "$"
TensorEncoder = Callable[[torch.Tensor, tuple[str, ...]], dict[str, Any]]
TensorDecoder = Callable[[dict[str, Any]], torch.Tensor]


class StructureError(ValueError):
    """The encoded structure is malformed (a damaged or foreign file)."""


# --------------------------------------------------------------------------- encoding


def encode(value: Any, on_tensor: TensorEncoder, path: tuple[str, ...] = ()) -> Any:
    """``value`` as JSON-ready data; ``on_tensor(tensor, path)`` returns each tensor's reference."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is int:
        return value
    if kind is float:
        return value if math.isfinite(value) else {TAG: "float", "v": repr(value)}
    if kind is list:
        return [encode(item, on_tensor, (*path, str(index))) for index, item in enumerate(value)]
    if kind is dict or kind is collections.OrderedDict:
        return _encode_dict(value, on_tensor, path)
    if isinstance(value, torch.Tensor):
        return on_tensor(value, path)
    if kind is tuple or kind is set:
        items = [encode(item, on_tensor, (*path, str(index))) for index, item in enumerate(value)]
        return {TAG: kind.__name__, "v": items}
    if kind is bytes or kind is bytearray:
        return {TAG: kind.__name__, "v": base64.b64encode(value).decode("ascii")}
    if kind is complex:
        return {TAG: "complex", "v": [encode(value.real, on_tensor), encode(value.imag, on_tensor)]}
    if kind is torch.Size:
        return {TAG: "size", "v": list(value)}
    if kind is torch.dtype:
        return {TAG: "dtype", "v": str(value).removeprefix("torch.")}
    if kind is torch.device:
        return {TAG: "device", "v": str(value)}
    where = "/".join(path) or "the checkpoint"
    raise UnsafeStateError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which the safetensors backend cannot "
        "store (nor torch.load(weights_only=True) load). Store plain Python types (dict, list, "
        "tuple, str, int, float, bool, None) and tensors instead."
    )


def _encode_dict(value: dict[Any, Any], on_tensor: TensorEncoder, path: tuple[str, ...]) -> Any:
    attrs = vars(value) if type(value) is collections.OrderedDict else {}
    if type(value) is dict and TAG not in value and all(type(key) is str for key in value):
        return {key: encode(item, on_tensor, (*path, key)) for key, item in value.items()}
    items = []
    for key, item in value.items():
        if isinstance(key, (torch.Tensor, list, dict)):
            where = "/".join(path) or "the checkpoint"
            raise UnsafeStateError(f"{where} has a key of type {type(key).__name__}, which cannot be stored")
        items.append([encode(key, on_tensor, path), encode(item, on_tensor, (*path, str(key)))])
    encoded: dict[str, Any] = {TAG: "odict" if type(value) is collections.OrderedDict else "dict", "items": items}
    if attrs:
        encoded["attrs"] = {name: encode(item, on_tensor, (*path, name)) for name, item in attrs.items()}
    return encoded


# --------------------------------------------------------------------------- decoding


def decode(node: Any, on_tensor: TensorDecoder) -> Any:
    """Rebuild the value :func:`encode` encoded; ``on_tensor(reference)`` returns each tensor.

    Raises :class:`StructureError` for anything :func:`encode` never writes.
    """
    kind = type(node)
    if node is None or kind in (bool, str, int, float):
        return node
    if kind is list:
        return [decode(item, on_tensor) for item in node]
    if kind is not dict:
        raise StructureError(f"unexpected JSON value of type {kind.__name__}")
    tag = node.get(TAG)
    if tag is None:
        return {key: decode(item, on_tensor) for key, item in node.items()}
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise StructureError(f"unknown tag {tag!r}")
    try:
        return decoder(node, on_tensor)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, (StructureError, CheckpointError)):
            raise
        raise StructureError(f"malformed {tag!r} value: {type(exc).__name__}: {exc}") from exc


def _list(node: dict[str, Any], field: str = "v") -> list[Any]:
    value = node[field]
    if type(value) is not list:
        raise StructureError(f"{node.get(TAG)!r} needs a list under {field!r}")
    return value


def _string(node: dict[str, Any]) -> str:
    value = node["v"]
    if type(value) is not str:
        raise StructureError(f"{node.get(TAG)!r} needs a string")
    return value


def _decode_float(node: dict[str, Any], on_tensor: TensorDecoder) -> float:
    text = _string(node)
    if text not in ("nan", "inf", "-inf"):
        raise StructureError(f"{text!r} is not a non-finite float")
    return float(text)


def _decode_dict(node: dict[str, Any], on_tensor: TensorDecoder) -> dict[Any, Any]:
    result: dict[Any, Any] = collections.OrderedDict() if node[TAG] == "odict" else {}
    for pair in _list(node, "items"):
        if type(pair) is not list or len(pair) != 2:
            raise StructureError("a dict item is not a [key, value] pair")
        result[decode(pair[0], on_tensor)] = decode(pair[1], on_tensor)
    attrs = node.get("attrs")
    if attrs is not None:
        if node[TAG] != "odict" or type(attrs) is not dict:
            raise StructureError("only an OrderedDict carries attributes")
        for name, value in attrs.items():
            if not name.isidentifier() or name.startswith("__"):
                raise StructureError(f"{name!r} is not an attribute ckpthooks writes")
            setattr(result, name, decode(value, on_tensor))
    return result


def _decode_complex(node: dict[str, Any], on_tensor: TensorDecoder) -> complex:
    parts = [decode(part, on_tensor) for part in _list(node)]
    if len(parts) != 2 or not all(type(part) is float for part in parts):
        raise StructureError("a complex number needs two floats")
    return complex(parts[0], parts[1])


def _decode_size(node: dict[str, Any], on_tensor: TensorDecoder) -> torch.Size:
    dims = _list(node)
    if not all(type(dim) is int for dim in dims):
        raise StructureError("a torch.Size needs integers")
    return torch.Size(dims)


def _decode_dtype(node: dict[str, Any], on_tensor: TensorDecoder) -> torch.dtype:
    dtype = getattr(torch, _string(node), None)
    if not isinstance(dtype, torch.dtype):
        raise StructureError(f"{node['v']!r} is not a torch dtype")
    return dtype


def _decode_tensor(node: dict[str, Any], on_tensor: TensorDecoder) -> torch.Tensor:
    if type(node.get("name")) is not str:
        raise StructureError("a tensor reference needs a name")
    return on_tensor(node)


_DECODERS: dict[str, Callable[[dict[str, Any], TensorDecoder], Any]] = {
    "float": _decode_float,
    "dict": _decode_dict,
    "odict": _decode_dict,
    "tuple": lambda node, on_tensor: tuple(decode(item, on_tensor) for item in _list(node)),
    "set": lambda node, on_tensor: {decode(item, on_tensor) for item in _list(node)},
    "bytes": lambda node, on_tensor: base64.b64decode(_string(node), validate=True),
    "bytearray": lambda node, on_tensor: bytearray(base64.b64decode(_string(node), validate=True)),
    "complex": _decode_complex,
    "size": _decode_size,
    "dtype": _decode_dtype,
    "device": lambda node, on_tensor: torch.device(_string(node)),
    "tensor": _decode_tensor,
}
