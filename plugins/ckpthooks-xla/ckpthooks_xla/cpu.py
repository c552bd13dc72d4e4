"""Moving XLA tensors to the CPU before a checkpoint is written: the ``xm.save`` semantics.

``xm.save`` executes the pending computation of every XLA tensor it is given on every ordinal, and
copies them to the CPU on the ordinal that writes, so that a later ``torch.load`` gets CPU tensors
(and works without torch_xla). :func:`move_to_cpu` does the same, with explicit handling of the
containers a checkpoint is made of.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
Convert = Callable[[list["torch.Tensor"]], Sequence["torch.Tensor"]]


def move_to_cpu(data: T, *, convert: bool = True) -> T:
    """``data`` with every XLA tensor replaced by a CPU copy.

    The pending computations of those tensors run first, in one batch (``convert=False`` only runs
    them and returns ``data`` as it is: what ``xm.save`` does on the ordinals that do not write).
    Containers that hold an XLA tensor are rebuilt with their own type (``dict``, ``OrderedDict``
    with the ``_metadata`` of a ``state_dict``, ``list``, ``tuple``, named tuples); the containers
    passed in are never changed, so an optimizer's live state stays on the device. Everything
    else, CPU tensors included, is shared rather than copied. A tensor reached twice becomes one
    CPU tensor, so tied weights stay tied; views of one tensor become separate copies (as with
    ``xm.save``). Without torch_xla imported no tensor can be on an XLA device, and ``data`` comes
    back as it is.
    """
    if "torch_xla" not in sys.modules:
        return data
    return replace_tensors(data, _is_xla, _xla_to_cpu if convert else _xla_sync)


def replace_tensors(data: T, select: Callable[[Any], bool], convert: Convert) -> T:
    """``data`` with the tensors ``select`` accepts replaced by ``convert``'s results.

    ``convert`` gets every selected tensor once, in the order first met, and returns their
    replacements in the same order. Containers on the way are rebuilt only when something inside
    them changed.
    """
    import torch

    found: dict[int, torch.Tensor] = {}

    def collect(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if select(obj):
                found.setdefault(id(obj), obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                collect(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                collect(value)

    collect(data)
    if not found:
        return data
    tensors = list(found.values())
    replacements = list(convert(tensors))
    if len(replacements) != len(tensors):
        raise RuntimeError(f"converting {len(tensors)} tensors returned {len(replacements)}")
    by_id = {id(tensor): new for tensor, new in zip(tensors, replacements)}

    def rebuild(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return by_id.get(id(obj), obj)
        if isinstance(obj, dict):
            items = [(key, rebuild(value)) for key, value in obj.items()]
            if all(new is old for (_, new), old in zip(items, obj.values())):
                return obj
            fresh = copy.copy(obj)  # keeps the type and attributes such as a state_dict's _metadata
            for key, value in items:
                fresh[key] = value
            return fresh
        if isinstance(obj, (list, tuple)):
            values = [rebuild(value) for value in obj]
            if all(new is old for new, old in zip(values, obj)):
                return obj
            if isinstance(obj, list):
                fresh_list = copy.copy(obj)
                fresh_list[:] = values
                return fresh_list
            if hasattr(obj, "_fields"):  # a named tuple
                return type(obj)(*values)
            return type(obj)(values)
        return obj

    result: T = rebuild(data)
    return result


def _is_xla(obj: Any) -> bool:
    return bool(obj.device.type == "xla")


def _xla_sync(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    import torch_xla

    sync_multi = getattr(torch_xla._XLAC, "_xla_sync_multi", None)
    if sync_multi is not None:  # what xm._maybe_convert_to_cpu calls (torch_xla 2.x)
        sync_multi(tensors, devices=[], wait=True, sync_xla_data=False)
    return tensors


def _xla_to_cpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    import torch_xla

    _xla_sync(tensors)
    get_cpu_tensors = getattr(torch_xla._XLAC, "_xla_get_cpu_tensors", None)
    if get_cpu_tensors is not None:  # one batched transfer, as xm.save does
        return list(get_cpu_tensors(tensors))
    return [tensor.cpu() for tensor in tensors]
