"""A load reads the bytes its verification checked, also while another process replaces the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import CorruptCheckpointError, StorageError
from ckpthooks import _store as store_module
from ckpthooks._catalog import read_manifest
from ckpthooks._store import READ_ATTEMPTS, CheckpointStore


def checkpoint(step: int) -> dict[str, Any]:
    return {"epoch": 0, "global_step": step, "state_dict": {"w": torch.full((64,), float(step))}}


def save(store: CheckpointStore, path: Path, step: int) -> None:
    store.save(checkpoint(step), str(path), epoch=0, global_step=step)


def replace_after_verification(
    monkeypatch: pytest.MonkeyPatch, times: int, replace: Any
) -> list[int]:
    """Run ``replace()`` right after each of the first ``times`` verifications of a load."""
    calls: list[int] = []
    real = store_module.verify_checkpoint

    def verify(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        result = real(*args, **kwargs)
        if len(calls) <= times:
            replace()
        return result

    monkeypatch.setattr(store_module, "verify_checkpoint", verify)
    return calls


def test_bytes_renamed_over_the_file_after_its_verification_are_checked_before_they_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the check and the load, other bytes (which do not match the manifest) are renamed
    over the file: the load must not return them unchecked."""
    store = CheckpointStore()
    target = tmp_path / "last.ckpt"
    save(store, target, 1)
    stranger = tmp_path / "stranger.pt"
    torch.save(checkpoint(99), stranger)

    calls = replace_after_verification(monkeypatch, 1, lambda: os.replace(stranger, target))
    with pytest.raises(CorruptCheckpointError, match=r"checksum|bytes"):
        store.load(str(target))
    assert len(calls) == 2  # the second attempt checked the new bytes against the manifest


def test_a_committed_overwrite_between_check_and_load_loads_the_new_version_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore()
    target = tmp_path / "last.ckpt"
    save(store, target, 1)
    calls = replace_after_verification(monkeypatch, 1, lambda: save(store, target, 2))
    loaded = store.load(str(target))
    assert loaded["global_step"] == 2
    manifest = read_manifest(str(target))
    assert manifest is not None and manifest.global_step == 2
    assert len(calls) == 2


def test_a_file_that_keeps_being_replaced_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore()
    target = tmp_path / "last.ckpt"
    save(store, target, 1)
    steps = iter(range(2, 100))
    replace_after_verification(monkeypatch, READ_ATTEMPTS, lambda: save(store, target, next(steps)))
    with pytest.raises(StorageError, match="replaced 3 times"):
        store.load(str(target))


def test_an_unchanged_file_is_checked_and_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CheckpointStore()
    target = tmp_path / "last.ckpt"
    save(store, target, 1)
    calls = replace_after_verification(monkeypatch, 0, lambda: None)
    os.link(target, tmp_path / "another-name")  # a new link (ctime changes) is not a new file
    assert store.load(str(target))["global_step"] == 1
    assert len(calls) == 1
