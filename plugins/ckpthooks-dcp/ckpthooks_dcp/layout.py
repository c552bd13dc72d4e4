"""How a checkpoint dict becomes DCP entries, and back.

A ckpthooks checkpoint is a nested dict (Lightning's layout: ``state_dict``, ``optimizer_states``,
``loops``, ``callbacks``, ...). In a DCP folder it is stored as

* one DCP tensor entry per tensor, named after its place in the dict with the parts joined by dots,
  as DCP itself flattens state dicts: ``state_dict.net.0.weight``,
  ``optimizer_states.0.state.3.exp_avg``. A ``DTensor`` entry is written by every rank that holds
  a shard of it; a plain tensor is written once, by rank 0 (replicated state, such as a step
  counter or the random generator states, is rank 0's, as with a ``.ckpt`` file under DDP). When
  two places would give the same name, ``#1``, ``#2``, ... is appended;
* one non-tensor entry, :data:`STRUCTURE_KEY`: the dict itself with every tensor replaced by
  ``{MARKER: name}``, written by rank 0 and read with ``torch.load(weights_only=...)``.

Every rank computes the names from its own dict; ranks build the same dict, so they agree.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ckpthooks_dcp._version import FORMAT_VERSION

#: The DCP entry holding the checkpoint's structure.
STRUCTURE_KEY = "ckpthooks_dcp.structure"
#: The key of the dict that stands for a tensor in the structure.
MARKER = "__ckpthooks_dcp_tensor__"

Path = tuple[Any, ...]


def name_of(path: Path) -> str:
    return ".".join(str(part) for part in path)


def is_dtensor(value: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    return isinstance(value, DTensor)


class _Namer:
    def __init__(self) -> None:
        self.taken: set[str] = {STRUCTURE_KEY}

    def __call__(self, path: Path) -> str:
        base = name_of(path)
        name, n = base, 0
        while name in self.taken:
            n += 1
            name = f"{base}#{n}"
        self.taken.add(name)
        return name


def split(checkpoint: Any) -> tuple[dict[str, Any], Any]:
    """``(tensors by name, structure)`` of ``checkpoint`` (containers are rebuilt, tensors shared)."""
    import torch

    namer = _Namer()
    tensors: dict[str, Any] = {}

    def walk(value: Any, path: Path) -> Any:
        if isinstance(value, torch.Tensor):
            name = namer(path)
            tensors[name] = value
            return {MARKER: name}
        kind = type(value)
        if kind is dict or kind is OrderedDict:
            rebuilt = kind((key, walk(item, (*path, key))) for key, item in value.items())
            metadata = getattr(value, "_metadata", None)
            if metadata is not None:  # a module's state_dict carries its version info here
                setattr(rebuilt, "_metadata", metadata)  # noqa: B010 - not a declared attribute
            return rebuilt
        if kind is list or kind is tuple:
            return kind(walk(item, (*path, index)) for index, item in enumerate(value))
        return value

    structure = walk(checkpoint, ())
    return tensors, {"format_version": FORMAT_VERSION, "checkpoint": structure}


def iter_tensor_paths(structure: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """``(path, name)`` of every tensor marker in a structure, in order."""
    if type(structure) in (dict, OrderedDict):
        if set(structure) == {MARKER}:
            yield path, structure[MARKER]
            return
        for key, item in structure.items():
            yield from iter_tensor_paths(item, (*path, key))
    elif type(structure) in (list, tuple):
        for index, item in enumerate(structure):
            yield from iter_tensor_paths(item, (*path, index))


def join(structure: Any, tensors: dict[str, Any]) -> Any:
    """The checkpoint dict: ``structure`` with every marker replaced by its tensor."""

    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is dict or kind is OrderedDict:
            if set(value) == {MARKER}:
                return tensors[value[MARKER]]
            rebuilt = kind((key, walk(item)) for key, item in value.items())
            metadata = getattr(value, "_metadata", None)
            if metadata is not None:
                setattr(rebuilt, "_metadata", metadata)  # noqa: B010 - not a declared attribute
            return rebuilt
        if kind is list or kind is tuple:
            return kind(walk(item) for item in value)
        return value

    return walk(structure)
