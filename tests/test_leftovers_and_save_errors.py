"""Leftovers of crashed saves are removed at the next start; failed saves keep bookkeeping consistent."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer, ConfigurationError, ModelCheckpoint, StorageError
from ckpthooks._catalog import read_manifest
from ckpthooks._commit import STALE_AFTER, clean_leftovers
from ckpthooks._io import durable, torch_io
from tests.helpers import TinyNet


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_a_dead_process_are_removed_at_the_next_start(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    leftover = folder / f".epoch=0.ckpt{durable.TEMP_MARKER}{dead_pid()}-0badf00d-12345678"
    leftover.write_bytes(b"half a checkpoint")
    mine = folder / "notes.txt"
    mine.write_text("not ours")
    lookalike = folder / ".hidden.ckpthooks-tmp-notanumber"
    lookalike.write_text("not ours either")
    Checkpointer(tmp_path)  # the default policy's folder is <root>/checkpoints
    assert not leftover.exists()
    assert mine.exists() and lookalike.exists()


def test_a_live_writers_temporary_file_is_kept_until_stale(tmp_path: Path) -> None:
    live = tmp_path / f".a.ckpt{durable.TEMP_MARKER}{os.getppid()}-0badf00d-1"
    live.write_bytes(b"x")
    assert clean_leftovers([str(tmp_path)]) == []
    old = time.time() - STALE_AFTER - 60
    os.utime(live, (old, old))
    assert clean_leftovers([str(tmp_path)]) == [str(live)]


def test_this_process_own_temporary_files_are_kept(tmp_path: Path) -> None:
    own = Path(durable.temp_name_for(str(tmp_path / "a.ckpt")))
    own.write_bytes(b"x")
    old = time.time() - STALE_AFTER - 60
    os.utime(own, (old, old))
    assert clean_leftovers([str(tmp_path)]) == []
    assert own.exists()


class FailingIO(torch_io.TorchCheckpointIO):
    """Fails the saves whose target name contains one of ``failing``."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any = None) -> Any:
        if any(part in os.path.basename(path) for part in self.failing):
            raise StorageError(f"injected failure writing {path}")
        return super().save_checkpoint(checkpoint, path, storage_options)


def run(tmp_path: Path, failing: set[str], on_save_error: str, epochs: int = 3) -> tuple[Checkpointer, ModelCheckpoint]:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=1, save_last=True)
    ckpt = Checkpointer(tmp_path, callbacks=[mc], checkpoint_io=FailingIO(failing), on_save_error=on_save_error)
    ckpt.track(model=TinyNet())
    losses = [3.0, 2.0, 1.0]

    def epoch_fn(epoch: int) -> None:
        for _ in ckpt.batches(range(2)):
            pass
        ckpt.log("loss", losses[epoch])

    ckpt.fit(epoch_fn, max_epochs=epochs)
    return ckpt, mc


def test_a_failed_save_raises_by_default_and_keeps_the_committed_files(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="injected"):
        run(tmp_path, {"epoch=1"}, "raise")
    assert {p.name for p in tmp_path.glob("*.ckpt")} == {"epoch=0.ckpt", "last.ckpt"}
    assert read_manifest(str(tmp_path / "epoch=0.ckpt")) is not None


def test_continue_on_save_failure_logs_and_keeps_bookkeeping_consistent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ckpt, mc = run(tmp_path, {"epoch=1"}, "log")
    assert "checkpoint save failed at step 4; training goes on" in caplog.text
    assert ckpt.current_epoch == 2  # training went on
    # epoch 1 never made it: not tracked; epoch 2 replaced epoch 0 as the best
    assert {Path(p).name for p in mc.best_k_models} == {"epoch=2.ckpt"}
    assert {p.name for p in tmp_path.glob("*.ckpt")} == {"epoch=2.ckpt", "last.ckpt"}
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["epoch"] == 2


def test_a_failed_last_save_restores_the_previous_last_path(tmp_path: Path) -> None:
    _, mc = run(tmp_path, {"last"}, "log", epochs=1)
    assert mc.last_model_path == ""
    assert {Path(p).name for p in mc.best_k_models} == {"epoch=0.ckpt"}


def test_configuration_errors_are_never_swallowed(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{nope}")
    ckpt = Checkpointer(tmp_path, callbacks=[mc], on_save_error="log").track(model=TinyNet())
    with pytest.raises(ConfigurationError, match="nope"):
        ckpt.fit(lambda epoch: list(ckpt.batches(range(1))), max_epochs=1)  # one step, so a save is due
    with pytest.raises(ConfigurationError, match="on_save_error"):
        Checkpointer(tmp_path, on_save_error="ignore")  # type: ignore[arg-type]


def test_a_pruning_failure_does_not_fail_the_committed_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=1)
    ckpt = Checkpointer(tmp_path, callbacks=[mc]).track(model=TinyNet())

    def broken_remove(path: str) -> None:
        raise StorageError(f"injected: cannot delete {path}")

    monkeypatch.setattr(ckpt.store, "remove", broken_remove)
    ckpt.fit(lambda epoch: [ckpt.log("loss", 3.0 - epoch) for _ in ckpt.batches(range(1))], max_epochs=2)
    assert "older files may be left behind" in caplog.text
    assert read_manifest(str(tmp_path / "epoch=1.ckpt")) is not None
    assert {Path(p).name for p in mc.best_k_models} == {"epoch=1.ckpt"}


def test_a_forked_child_gets_its_own_process_token(tmp_path: Path) -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports its token and leaves at once
        os.write(write, durable.PROCESS_TOKEN.encode())
        os._exit(0)
    os.close(write)
    child_token = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert child_token and child_token != durable.PROCESS_TOKEN
    leftover = tmp_path / f".a.ckpt{durable.TEMP_MARKER}{pid}-{child_token}-1"
    leftover.write_bytes(b"x")
    assert clean_leftovers([str(tmp_path)]) == [str(leftover)]


# ------------------------------------------------------------------ what the log says after a failed overwrite


def _committed_last(root: Path) -> tuple[Checkpointer, Path]:
    ckpt = Checkpointer(root, enable_checkpointing=False).track(model=TinyNet())
    ckpt.progress.global_step = 3
    target = root / "last.ckpt"
    ckpt.save_checkpoint(target)
    return ckpt, target


def test_a_save_that_fails_before_uncommitting_says_the_file_stays_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ckpthooks import _commit as store_module
    from ckpthooks.testing.faults import disk_full

    ckpt, target = _committed_last(tmp_path)
    before = read_manifest(str(target))

    def keep_previous(path: str, *args: Any) -> str | None:
        raise disk_full(path + ".manifest.json")  # the kept version's manifest finds the disk full

    def write_manifest(path: str, *args: Any, **kwargs: Any) -> str:
        raise disk_full(path + ".manifest.json")  # and so does every other manifest

    monkeypatch.setattr(store_module, "keep_previous", keep_previous)
    monkeypatch.setattr(store_module, "write_manifest", write_manifest)
    ckpt.progress.global_step = 6
    with pytest.raises(OSError, match="No space left on device"):
        ckpt.save_checkpoint(target)
    assert read_manifest(str(target)) == before  # committed all along
    assert "uncommitted" not in caplog.text, caplog.text
    assert f"the failed save left {target} unchanged; it stays committed" in caplog.text
    assert Checkpointer(tmp_path, enable_checkpointing=False).find_checkpoint("last") == str(target)


def test_a_failed_overwrite_that_cannot_recommit_names_the_kept_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ckpthooks import _commit as store_module
    from ckpthooks._io.torch_io import TorchCheckpointIO
    from ckpthooks._manifest import previous_path
    from ckpthooks.testing.faults import disk_full

    ckpt, target = _committed_last(tmp_path)
    real_write = store_module.write_manifest

    def save(self: Any, checkpoint: Any, path: str, storage_options: Any = None) -> Any:
        raise disk_full(path)

    def write_manifest(path: str, *args: Any, **kwargs: Any) -> str:
        if path == str(target):
            raise disk_full(path + ".manifest.json")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", save)
    monkeypatch.setattr(store_module, "write_manifest", write_manifest)
    ckpt.progress.global_step = 6
    with pytest.raises(OSError, match="No space left on device"):
        ckpt.save_checkpoint(target)
    kept = previous_path(str(target))
    assert read_manifest(str(target)) is None and read_manifest(kept) is not None  # as the log says
    assert f"{target} is uncommitted after the failed save" in caplog.text
    assert f"its previous version stays committed as {kept}" in caplog.text
    assert Checkpointer(tmp_path, enable_checkpointing=False).find_checkpoint("last") == kept
