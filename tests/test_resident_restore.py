"""A restore leaves the training state in ordinary memory, not in a mapping of the file.

A local checkpoint is loaded memory-mapped; an optimizer keeps the tensors it is given, so without
a copy its state would stay a copy-on-write mapping of the file and the first ``optimizer.step()``
would take a page fault per 4 KiB page (docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ckpthooks import Checkpointer
from tests.helpers import TinyNet

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """The address ranges of this process that map ``path``."""
    ranges = []
    target = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and os.path.realpath(fields[5]) == target:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def _in(ranges: list[tuple[int, int]], tensor: torch.Tensor) -> bool:
    pointer = tensor.untyped_storage().data_ptr()
    return any(start <= pointer < end for start, end in ranges)


def _trained(root: Path) -> tuple[Checkpointer, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(8, 256)).sum().backward()
    optimizer.step()
    ckpt = Checkpointer(root, enable_checkpointing=False, preemption_signals=None)
    return ckpt.track(model=model, optimizers=optimizer), model, optimizer


def test_the_restored_optimizer_state_is_not_a_mapping_of_the_file(tmp_path: Path) -> None:
    saver, _model, optimizer = _trained(tmp_path)
    path = tmp_path / "c.ckpt"
    saver.save_checkpoint(path)
    expected = {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state_dict()["state"].items()}

    ckpt, model2, optimizer2 = _trained(tmp_path / "other")
    optimizer2.state.clear()
    loaded = torch.load(path, mmap=True, weights_only=True)  # the file is mapped as a restore maps it
    ranges = _mapped_ranges(path)
    assert ranges and _in(ranges, next(iter(loaded["optimizer_states"][0]["state"][0].values())))
    del loaded
    ckpt.restore(path)
    ranges = _mapped_ranges(path)
    tensors = [v for s in optimizer2.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert tensors and not any(_in(ranges, t) for t in tensors)
    assert not any(_in(ranges, p) for p in model2.parameters())
    for key, state in optimizer2.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(value, expected[key][name]), (key, name)


def test_a_restore_from_a_file_with_a_tiny_net_still_trains_alike(tmp_path: Path) -> None:
    """The copy changes nothing but where the bytes live: the next steps match an uninterrupted run."""
    torch.manual_seed(1)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, preemption_signals=None)
    ckpt.track(model=model, optimizers=optimizer)
    x = torch.randn(16, 4)
    model(x).sum().backward()
    optimizer.step()
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()
    after = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(2)
    model2 = TinyNet()
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=0.1)
    ckpt2 = Checkpointer(tmp_path / "b", enable_checkpointing=False, preemption_signals=None)
    ckpt2.track(model=model2, optimizers=optimizer2).restore(tmp_path / "a.ckpt")
    optimizer2.zero_grad()
    model2(x).sum().backward()
    optimizer2.step()
    for key, value in model2.state_dict().items():
        assert torch.equal(value, after[key]), key
