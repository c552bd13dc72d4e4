"""A restore verifies a local checkpoint's checksum on another thread while it loads it and copies
the optimizer state out of the mapped file (``CheckpointStore._load_verifying``); those copies
follow the checksum pass through the file (``ReadPacer``). A damaged file is still reported as
damaged and changes nothing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer, StateComponent, hookimpl
from ckpthooks import _store as store_module
from ckpthooks._catalog import read_manifest
from ckpthooks._plugin_host import PluginHost
from ckpthooks._resident import ReadPacer, _file_ends, pacing, resident_copies
from ckpthooks.exceptions import CorruptCheckpointError


def _trained(root: Path, seed: int = 0) -> tuple[Checkpointer, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.randn(8, 64)).sum().backward()
    optimizer.step()
    ckpt = Checkpointer(root, enable_checkpointing=False, preemption_signals=None)
    return ckpt.track(model=model, optimizers=optimizer), model, optimizer


def _saved(tmp_path: Path) -> Path:
    saver, _, _ = _trained(tmp_path / "saver")
    path = tmp_path / "c.ckpt"
    saver.save_checkpoint(path)
    return path


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    tensors = [p.detach().clone() for p in model.parameters()]
    tensors += [v.clone() for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensors


def test_the_optimizer_state_is_prepared_while_the_checksum_is_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checksum pass waits (up to 10 s) for the optimizer's prepare step to have started: only
    a restore that runs both at once gets there without the pass timing out."""
    path = _saved(tmp_path)
    started = threading.Event()
    original_verify = store_module.verify_checkpoint
    overlapped: list[bool] = []

    def slow_verify(*args: Any, **kwargs: Any) -> Any:
        overlapped.append(started.wait(timeout=10))
        return original_verify(*args, **kwargs)

    from ckpthooks._components import OptimizersComponent

    original_prepare = OptimizersComponent.prepare

    def prepare(self: Any, checkpointer: Any, state: Any) -> Any:
        started.set()
        return original_prepare(self, checkpointer, state)

    monkeypatch.setattr(store_module, "verify_checkpoint", slow_verify)
    monkeypatch.setattr(OptimizersComponent, "prepare", prepare)
    ckpt, _, _ = _trained(tmp_path / "restorer", seed=1)
    ckpt.restore(path)
    assert overlapped == [True]


@pytest.mark.parametrize("where", ["tensor data", "zip index"])
def test_a_damaged_file_is_reported_as_damaged_and_nothing_changes(tmp_path: Path, where: str) -> None:
    """A flipped byte in a tensor (the load succeeds) and in the zip index (the load fails): both
    raise the checksum error, and neither the model nor the optimizer changes."""
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if where == "tensor data" else len(data) - 30
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))
    ckpt, model, optimizer = _trained(tmp_path / "restorer", seed=1)
    before = _snapshot(model, optimizer)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        ckpt.restore(path)
    after = _snapshot(model, optimizer)
    assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))


def test_a_component_is_prepared_once_per_restore(tmp_path: Path) -> None:
    calls: list[Any] = []

    class Counted(StateComponent):
        name = "counted"

        def dump(self, checkpointer: Any) -> Any:
            return {"value": torch.arange(4)}

        def prepare(self, checkpointer: Any, state: Any) -> Any:
            calls.append("prepare")
            return {"value": state["value"] + 100}

        def load(self, checkpointer: Any, state: Any) -> None:
            calls.append(("load", state["value"].tolist()))

    class Plugin:
        @hookimpl
        def register_state_components(self, checkpointer: Any) -> list[StateComponent]:
            return [Counted()]

    def make(root: Path) -> Checkpointer:
        host = PluginHost(load_entry_points=False)
        host.register(Plugin(), "counted")
        return Checkpointer(root, plugin_host=host, enable_checkpointing=False, preemption_signals=None)

    path = tmp_path / "c.ckpt"
    make(tmp_path / "saver").save_checkpoint(path)
    make(tmp_path / "restorer").restore(path)
    assert calls == ["prepare", ("load", [100, 101, 102, 103])]


def test_a_value_replaced_by_a_load_hook_is_prepared_again(tmp_path: Path) -> None:
    """A model's ``on_load_checkpoint`` may replace state after it was prepared: the replacement
    is what gets loaded, prepared in its turn."""
    path = _saved(tmp_path)
    ckpt, model, optimizer = _trained(tmp_path / "restorer", seed=1)
    replacement = [dict(optimizer.state_dict())]
    expected = [v.clone() for s in replacement[0]["state"].values() for v in s.values() if v.dim()]

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        checkpoint["optimizer_states"] = replacement

    model.on_load_checkpoint = on_load_checkpoint  # type: ignore[assignment]
    ckpt.restore(path)
    got = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_restore_from_dict_prepares_too(tmp_path: Path) -> None:
    """Without the store (a dict the caller loaded memory-mapped), the optimizer state is still
    copied into ordinary memory."""
    path = _saved(tmp_path)
    ckpt, _, optimizer = _trained(tmp_path / "restorer", seed=1)
    loaded = torch.load(path, mmap=True, weights_only=True)
    mapped = {v.data_ptr() for s in loaded["optimizer_states"][0]["state"].values() for v in s.values()}
    ckpt.restore_from_dict(loaded)
    got = {v.data_ptr() for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)}
    assert got and not (got & mapped)


# ----------------------------------------------------------------------------- ReadPacer
needs_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")


@needs_maps
def test_file_offsets_of_mapped_tensors_are_the_records_offsets(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    tensors = {f"t{i}": torch.full((1000 + i,), float(i)) for i in range(5)}
    torch.save(tensors, path)
    loaded = torch.load(path, mmap=True, weights_only=True)
    status = os.stat(path)
    ends = _file_ends(list(loaded.values()), (status.st_dev, status.st_ino))
    data = path.read_bytes()
    for (name, tensor), end in zip(loaded.items(), ends):
        assert end is not None
        nbytes = tensor.numel() * tensor.element_size()
        assert data[end - nbytes : end] == tensors[name].numpy().tobytes()
    assert _file_ends([torch.zeros(3)], (status.st_dev, status.st_ino)) == [None]


@needs_maps
def test_copies_wait_for_the_pass_to_read_their_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t.pt"
    torch.save({"a": torch.ones(4 << 20), "b": torch.zeros(4 << 20)}, path)  # 16 MiB each
    loaded = torch.load(path, mmap=True, weights_only=True)
    pacer = ReadPacer(str(path))
    result: list[list[torch.Tensor]] = []

    def copy() -> None:
        with pacing(pacer):
            result.append(resident_copies(list(loaded.values()), workers=2))

    worker = threading.Thread(target=copy)
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive()  # nothing read yet: both copies wait
    pacer.advance(os.path.getsize(path))
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert torch.equal(result[0][0], loaded["a"]) and torch.equal(result[0][1], loaded["b"])
    assert result[0][0].data_ptr() != loaded["a"].data_ptr()


@needs_maps
def test_a_finished_pass_releases_every_waiter(tmp_path: Path) -> None:
    """A failed checksum pass ends without reading the file through: the copies must not hang."""
    path = tmp_path / "t.pt"
    torch.save({"a": torch.ones(1 << 20)}, path)
    loaded = torch.load(path, mmap=True, weights_only=True)
    pacer = ReadPacer(str(path))
    pacer.finish()
    with pacing(pacer):
        copies = resident_copies(list(loaded.values()))
    assert torch.equal(copies[0], loaded["a"])


def test_resident_copies_keep_the_order_and_values() -> None:
    tensors = [torch.randn(n) for n in (3, 1 << 22, 7, 1 << 21, 5)]
    for workers in (1, 2, 3):
        copies = resident_copies(tensors, workers=workers)
        assert [c.shape for c in copies] == [t.shape for t in tensors]
        assert all(torch.equal(c, t) and c.data_ptr() != t.data_ptr() for c, t in zip(copies, tensors))


def test_a_load_without_a_manifest_is_not_verified_alongside(tmp_path: Path) -> None:
    """A torch.save file has no manifest: it loads as before (nothing to verify), prepared too."""
    path = tmp_path / "plain.ckpt"
    _saver, model, optimizer = _trained(tmp_path / "saver")
    torch.save({"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}, path)
    assert read_manifest(str(path)) is None
    ckpt, model2, optimizer2 = _trained(tmp_path / "restorer", seed=1)
    ckpt.restore(path, strict=False)
    assert all(torch.equal(a, b) for a, b in zip(_snapshot(model, optimizer), _snapshot(model2, optimizer2)))
