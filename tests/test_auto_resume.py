"""``ckpt_path="last"`` falls back past corrupt or uncommitted checkpoints, naming what it skipped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from ckpthooks import Checkpointer, CheckpointNotFoundError, ModelCheckpoint
from tests.helpers import TinyNet


def saved_at(root: Path, *steps: int) -> Checkpointer:
    ckpt = Checkpointer(root, callbacks=[ModelCheckpoint(dirpath=root / "ckpts", save_top_k=-1)]).track(
        model=TinyNet()
    )
    for step in steps:
        ckpt.progress.global_step = step
        ckpt.save_checkpoint(root / "ckpts" / f"step={step}.ckpt")
    return ckpt


def test_a_corrupt_newest_checkpoint_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved_at(tmp_path, 10, 20)
    newest = tmp_path / "ckpts" / "step=20.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    report = saved_at(tmp_path).restore("last")
    assert report is not None and report.global_step == 10
    assert f"skipping {newest} for resume" in caplog.text and "checksum" in caplog.text


def test_an_uncommitted_newer_file_is_named_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saved_at(tmp_path, 10)
    time.sleep(0.01)
    half_written = tmp_path / "ckpts" / "step=30.ckpt"
    torch.save({"state_dict": {}}, half_written)  # data without a manifest: the save never committed
    os.utime(half_written, None)
    report = saved_at(tmp_path).restore("last")
    assert report is not None and report.global_step == 10
    assert f"ignoring {half_written}: never committed" in caplog.text


def test_no_checkpoint_starts_fresh_unless_one_must_exist(tmp_path: Path) -> None:
    ckpt = saved_at(tmp_path)
    assert ckpt.restore("last") is None and ckpt.global_step == 0
    with pytest.raises(CheckpointNotFoundError, match="no committed checkpoint"):
        ckpt.restore("last", must_exist=True)


def test_every_checkpoint_corrupt_starts_fresh_with_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saved_at(tmp_path, 10)
    only = tmp_path / "ckpts" / "step=10.ckpt"
    only.write_bytes(only.read_bytes()[:-5])
    assert saved_at(tmp_path).restore("last") is None
    assert f"skipping {only} for resume" in caplog.text
