"""How checkpoints are rebuilt around the tensors that move to the CPU (no XLA needed here: a
stand-in selection moves float64 tensors instead; test_xla_single.py moves real XLA tensors)."""

from __future__ import annotations

import collections
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest
import torch

from ckpthooks_xla import move_to_cpu
from ckpthooks_xla.cpu import replace_tensors


class Pair(NamedTuple):
    first: Any
    second: Any


def _is_double(obj: Any) -> bool:
    return bool(obj.dtype == torch.float64)


def _to_float(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [tensor.float() for tensor in tensors]


def _sample() -> dict[str, Any]:
    state = collections.OrderedDict(weight=torch.ones(2, dtype=torch.float64), bias=torch.zeros(2))
    state._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]  # what nn.Module.state_dict sets
    return {
        "epoch": 3,
        "name": "run",
        "state_dict": state,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2, dtype=torch.float64)}}, "param_groups": []}],
        "pair": Pair(torch.ones(1, dtype=torch.float64), "x"),
        "plain_tuple": (torch.ones(1, dtype=torch.float64), 1),
        "untouched": {"cpu": torch.zeros(3), "values": [1, 2.0, None]},
    }


def test_selected_tensors_are_replaced_and_everything_else_is_kept() -> None:
    data = _sample()
    out = replace_tensors(data, _is_double, _to_float)
    assert out["state_dict"]["weight"].dtype == torch.float32
    assert out["optimizer_states"][0]["state"][0]["exp_avg"].dtype == torch.float32
    assert out["pair"].first.dtype == torch.float32 and out["pair"].second == "x"
    assert out["plain_tuple"][0].dtype == torch.float32 and out["plain_tuple"][1] == 1
    assert (out["epoch"], out["name"]) == (3, "run")


def test_container_types_and_state_dict_metadata_survive() -> None:
    out = replace_tensors(_sample(), _is_double, _to_float)
    assert type(out["state_dict"]) is collections.OrderedDict
    assert list(out["state_dict"]) == ["weight", "bias"]
    assert out["state_dict"]._metadata == {"": {"version": 1}}
    assert type(out["pair"]) is Pair
    assert type(out["plain_tuple"]) is tuple


def test_the_input_is_never_changed_and_unchanged_parts_are_shared() -> None:
    data = _sample()
    live_state = data["optimizer_states"][0]["state"][0]
    out = replace_tensors(data, _is_double, _to_float)
    assert live_state["exp_avg"].dtype == torch.float64  # an optimizer's live state stays put
    assert out is not data and out["state_dict"] is not data["state_dict"]
    assert out["untouched"] is data["untouched"]  # nothing to move inside: not copied
    assert out["state_dict"]["bias"] is data["state_dict"]["bias"]


def test_a_tensor_reached_twice_stays_one_tensor() -> None:
    shared = torch.ones(2, dtype=torch.float64)
    calls: list[int] = []

    def convert(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        calls.append(len(tensors))
        return _to_float(tensors)

    out = replace_tensors({"encoder": {"w": shared}, "decoder": {"w": shared}}, _is_double, convert)
    assert calls == [1]
    assert out["encoder"]["w"] is out["decoder"]["w"]  # tied weights stay tied


def test_nothing_selected_returns_the_same_object() -> None:
    data = _sample()
    assert replace_tensors(data, lambda t: False, _to_float) is data


def test_a_converter_returning_the_wrong_count_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="converting 1 tensors returned 0"):
        replace_tensors({"w": torch.ones(1, dtype=torch.float64)}, _is_double, lambda tensors: [])


def test_move_to_cpu_leaves_cpu_checkpoints_alone() -> None:
    data = _sample()
    assert move_to_cpu(data) is data
    assert move_to_cpu(data, convert=False) is data


def test_move_to_cpu_without_torch_xla_does_not_walk_the_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch_xla", raising=False)
    sentinel = object()
    assert move_to_cpu(sentinel) is sentinel
