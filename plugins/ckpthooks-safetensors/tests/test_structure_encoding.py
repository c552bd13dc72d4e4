"""The JSON encoding of the non-tensor structure: exact for every weights-only type, strict on decode."""

from __future__ import annotations

import collections
import json
import math
from typing import Any

import pytest
import torch
from ckpthooks import UnsafeStateError
from ckpthooks.testing.storage_contract import assert_same_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpthooks_safetensors._structure import StructureError, decode, encode


def _no_tensors(tensor: torch.Tensor, path: tuple[str, ...]) -> dict[str, Any]:
    raise AssertionError(f"unexpected tensor at {path}")


def _round_trip(value: Any) -> Any:
    text = json.dumps(encode(value, _no_tensors), allow_nan=False)
    return decode(json.loads(text), lambda reference: pytest.fail("unexpected tensor reference"))


def test_values_json_holds_exactly_stay_plain_json() -> None:
    value = {"epoch": 3, "lr": 0.1, "name": "run", "done": False, "best": None, "sizes": [1, 2.5, "x"]}
    assert encode(value, _no_tensors) == value


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (math.inf, {"$": "float", "v": "inf"}),
        (-math.inf, {"$": "float", "v": "-inf"}),
        (math.nan, {"$": "float", "v": "nan"}),
        ((1, "a"), {"$": "tuple", "v": [1, "a"]}),
        ({0: "a", 1: "b"}, {"$": "dict", "items": [[0, "a"], [1, "b"]]}),
        ({"$": 1}, {"$": "dict", "items": [["$", 1]]}),
        (b"\x00\xff", {"$": "bytes", "v": "AP8="}),
        (1 + 2j, {"$": "complex", "v": [1.0, 2.0]}),
        (torch.Size([2, 3]), {"$": "size", "v": [2, 3]}),
        (torch.bfloat16, {"$": "dtype", "v": "bfloat16"}),
        (torch.device("cpu"), {"$": "device", "v": "cpu"}),
    ],
    ids=["inf", "-inf", "nan", "tuple", "int-keys", "dollar-key", "bytes", "complex", "size", "dtype", "device"],
)
def test_values_json_cannot_hold_are_tagged(value: Any, encoded: Any) -> None:
    assert encode(value, _no_tensors) == encoded
    assert_same_checkpoint(_round_trip(value), value)


def test_an_ordered_dict_keeps_its_type_order_and_metadata() -> None:
    state = torch.nn.BatchNorm1d(2).state_dict()
    state = collections.OrderedDict((key, i) for i, key in enumerate(reversed(state)))
    state._metadata = collections.OrderedDict([("", {"version": 2})])  # type: ignore[attr-defined]
    back = _round_trip(state)
    assert type(back) is collections.OrderedDict
    assert list(back) == list(state)
    assert back._metadata == {"": {"version": 2}}
    assert type(back._metadata) is collections.OrderedDict


def test_ints_and_floats_keep_their_type_and_value() -> None:
    value = [1, 1.0, 2**100, -(2**70), 5e-324, -0.0, 1e16, True, 0]
    back = _round_trip(value)
    assert [type(v) for v in back] == [int, float, int, int, float, float, float, bool, int]
    assert back[:5] == value[:5]
    assert math.copysign(1.0, back[5]) == -1.0


@pytest.mark.parametrize(
    "value",
    [
        collections.defaultdict(int),
        frozenset({1}),
        type("IntLike", (int,), {})(3),
        object(),
        {"callback": lambda: None},
    ],
    ids=["defaultdict", "frozenset", "int-subclass", "object", "function"],
)
def test_anything_else_is_refused(value: Any) -> None:
    with pytest.raises(UnsafeStateError, match="cannot store"):
        encode({"hparams": {"x": value}}, _no_tensors)


def test_unhashable_keys_are_refused() -> None:
    with pytest.raises(UnsafeStateError, match="has a key of type Tensor"):
        encode({torch.ones(1): 1}, _no_tensors)


def test_tensors_are_replaced_by_what_the_callback_returns_with_their_path() -> None:
    seen: list[tuple[str, ...]] = []

    def on_tensor(tensor: torch.Tensor, path: tuple[str, ...]) -> dict[str, Any]:
        seen.append(path)
        return {"$": "tensor", "name": "/".join(path)}

    encoded = encode({"opt": [{"state": {0: {"exp_avg": torch.ones(1)}}}], "t": (torch.zeros(1),)}, on_tensor)
    assert seen == [("opt", "0", "state", "0", "exp_avg"), ("t", "0")]
    assert encoded["t"] == {"$": "tuple", "v": [{"$": "tensor", "name": "t/0"}]}


@pytest.mark.parametrize(
    "node",
    [
        {"$": "eval", "v": "1+1"},
        {"$": 5},
        {"$": "tuple", "v": "abc"},
        {"$": "set", "v": [[1]]},
        {"$": "dict", "items": [[1]]},
        {"$": "dict", "items": [], "attrs": {"x": 1}},
        {"$": "bytes", "v": "not base64!"},
        {"$": "device", "v": "warp-drive:9"},
        {"$": "size", "v": [1.5]},
        {"$": "tensor"},
    ],
)
def test_decoding_refuses_what_encoding_never_writes(node: Any) -> None:
    with pytest.raises(StructureError):
        decode({"x": node}, lambda reference: torch.ones(1))


# --------------------------------------------------------------------------- property

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**64, max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=16)
)
_keys = st.text() | st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False) | st.tuples(st.integers())
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(_keys, children, max_size=4)
        | st.dictionaries(st.text(), children, max_size=4).map(collections.OrderedDict)
        | st.sets(st.integers() | st.text(), max_size=4)
        | st.builds(complex, st.floats(), st.floats())
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _values, max_size=5))
def test_every_weights_only_structure_round_trips_exactly(checkpoint: dict[str, Any]) -> None:
    assert_same_checkpoint(_round_trip(checkpoint), checkpoint)
