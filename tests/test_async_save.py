"""Asynchronous saving: the loop is blocked only for a copy; commits, pruning and errors stay ordered."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer, ModelCheckpoint, StorageError
from ckpthooks._async_save import BufferPool, snapshot
from ckpthooks._catalog import read_manifest, verify_checkpoint
from ckpthooks._store import CheckpointStore
from tests.helpers import TinyNet


def make(root: Path, **kwargs: Any) -> tuple[Checkpointer, TinyNet]:
    torch.manual_seed(0)
    model = TinyNet()
    ckpt = Checkpointer(root, async_save=True, **kwargs).track(model=model)
    return ckpt, model


def test_the_file_holds_the_state_at_save_time_not_later_edits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, model = make(tmp_path, enable_checkpointing=False)
    release = threading.Event()
    real_save = CheckpointStore.save

    def slow_save(self: CheckpointStore, *args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", slow_save)
    expected = model.l1.weight.detach().clone()
    assert ckpt.save_checkpoint(tmp_path / "a.ckpt") is None  # returns before the commit
    assert read_manifest(str(tmp_path / "a.ckpt")) is None
    with torch.no_grad():
        model.l1.weight.add_(1.0)  # training goes on while the worker writes
    release.set()
    ckpt.wait()
    verify_checkpoint(str(tmp_path / "a.ckpt"))
    saved = torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"]["l1.weight"]
    assert torch.equal(saved, expected)


def test_one_save_in_flight_the_next_one_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, _ = make(tmp_path, enable_checkpointing=False)
    release = threading.Event()
    real_save = CheckpointStore.save
    started: list[str] = []

    def slow_save(self: CheckpointStore, checkpoint: Any, path: str, **kwargs: Any) -> Any:
        started.append(Path(path).name)
        release.wait(10)
        return real_save(self, checkpoint, path, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", slow_save)
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    second_returned = threading.Event()
    thread = threading.Thread(target=lambda: (ckpt.save_checkpoint(tmp_path / "b.ckpt"), second_returned.set()))
    thread.start()
    time.sleep(0.3)
    assert not second_returned.is_set(), "the second save must wait for the first (back-pressure)"
    release.set()
    thread.join(10)
    ckpt.wait()
    assert started == ["a.ckpt", "b.ckpt"]
    assert read_manifest(str(tmp_path / "b.ckpt")) is not None


def test_top_1_never_leaves_more_than_one_file(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=1, every_n_train_steps=1)
    ckpt, _ = make(tmp_path, callbacks=[policy])
    ckpt.fit(lambda e: [ckpt.log("loss", 100.0 - ckpt.global_step) for _ in ckpt.batches(range(10))], max_epochs=2)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=20.ckpt"]
    assert policy.best_k_models == {str(tmp_path / "step=20.ckpt"): 81.0}  # logged before step 20 ended


def test_pruning_runs_after_the_replacement_is_committed(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=1)
    ckpt, _ = make(tmp_path, callbacks=[policy])
    order: list[tuple[str, bool]] = []
    real_remove = ckpt.store.remove

    def spy(path: str) -> None:
        newest = max(tmp_path.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        order.append((Path(path).name, read_manifest(str(newest)) is not None))
        real_remove(path)

    ckpt.store.remove = spy  # type: ignore[method-assign]
    ckpt.fit(lambda e: [ckpt.log("loss", 3.0 - e) for _ in ckpt.batches(range(1))], max_epochs=3)
    assert order == [("epoch=0.ckpt", True), ("epoch=1.ckpt", True)]


def failing_store(monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    real_save = CheckpointStore.save

    def save(self: CheckpointStore, checkpoint: Any, path: str, **kwargs: Any) -> Any:
        if failing in path:
            raise StorageError(f"injected failure writing {path}")
        return real_save(self, checkpoint, path, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", save)


def test_a_background_failure_is_raised_by_the_next_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_store(monkeypatch, "bad")
    ckpt, _ = make(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(StorageError, match="injected"):
        ckpt.save_checkpoint(tmp_path / "good.ckpt")
    ckpt.wait()  # the failure was delivered once, not again


def test_a_background_failure_is_raised_by_wait_and_by_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing_store(monkeypatch, "bad")
    ckpt, _ = make(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "bad.ckpt")
    with pytest.raises(StorageError, match="injected"):
        ckpt.wait()
    ckpt.save_checkpoint(tmp_path / "bad2.ckpt")
    with pytest.raises(StorageError, match="injected"):
        ckpt.close()


def test_with_on_save_error_log_policy_saves_go_on_and_forget_the_failed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failing_store(monkeypatch, "epoch=1")
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=2)
    ckpt, _ = make(tmp_path, callbacks=[policy], on_save_error="log")
    ckpt.fit(lambda e: [ckpt.log("loss", 3.0 - e) for _ in ckpt.batches(range(1))], max_epochs=3)
    assert "a background checkpoint save failed; training goes on" in caplog.text
    assert sorted(Path(p).name for p in policy.best_k_models) == ["epoch=0.ckpt", "epoch=2.ckpt"]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0.ckpt", "epoch=2.ckpt"]


def test_pending_saves_are_flushed_at_exit(tmp_path: Path) -> None:
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from ckpthooks import Checkpointer
ckpt = Checkpointer({str(tmp_path)!r}, enable_checkpointing=False, async_save=True)
ckpt.track(model=torch.nn.Linear(256, 256))
ckpt.save_checkpoint({str(tmp_path / "exit.ckpt")!r})
"""  # no wait(), no close(): the interpreter exits right after submitting
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    verify_checkpoint(str(tmp_path / "exit.ckpt"))


def test_snapshots_reuse_the_buffers_of_a_written_snapshot() -> None:
    live = {"w": torch.arange(6.0).reshape(2, 3), "tied": None, "steps": [torch.tensor(1)]}
    live["tied"] = live["w"]
    pool = BufferPool()
    first, buffers = snapshot(live, pool)
    assert first["tied"] is first["w"] and len(buffers) == 2
    for buffer, pinned in buffers:  # what the worker does once the snapshot is written
        pool.put(buffer, pinned)
    live["w"].add_(10)
    second, again = snapshot(live, pool)
    assert second["w"].data_ptr() == first["w"].data_ptr()  # the same memory, overwritten
    assert torch.equal(second["w"], torch.arange(6.0).reshape(2, 3) + 10)
    assert [b.data_ptr() for b, _ in again] == [b.data_ptr() for b, _ in buffers]


def test_resume_from_an_async_run(tmp_path: Path) -> None:
    ckpt, model = make(tmp_path)
    ckpt.fit(lambda e: [None for _ in ckpt.batches(range(3))], max_epochs=2)
    fresh, other = make(tmp_path)
    report = fresh.restore("last")
    assert report is not None and report.global_step == 6
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
