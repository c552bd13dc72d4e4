"""Overwriting a committed checkpoint (``last.ckpt``) never leaves a moment with nothing committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ckpthooks import Checkpointer, ModelCheckpoint
from ckpthooks import _catalog as catalog
from ckpthooks import _commit as commit
from ckpthooks._catalog import read_manifest
from ckpthooks._manifest import previous_path
from tests.helpers import TinyNet


class Crash(BaseException):
    """Stands in for the process dying at this point."""


def only_last(root: Path) -> tuple[Checkpointer, ModelCheckpoint]:
    mc = ModelCheckpoint(dirpath=root, save_top_k=0, save_last=True)
    return Checkpointer(root, callbacks=[mc]).track(model=TinyNet()), mc


def step(ckpt: Checkpointer) -> None:
    ckpt.epoch_start()
    ckpt.step_end()
    ckpt.epoch_end()


CRASHING_OVERWRITE = """
import os, signal, sys, torch
from ckpthooks import Checkpointer, ModelCheckpoint
from ckpthooks import _commit as commit
from tests.helpers import TinyNet

root, crash_in = sys.argv[1], sys.argv[2]
mc = ModelCheckpoint(dirpath=root, save_top_k=0, save_last=True)
ckpt = Checkpointer(root, callbacks=[mc]).track(model=TinyNet())
for target in range(2):
    if target == 1:  # the second save of last.ckpt dies half-way
        def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)
        if crash_in == "torch.save":
            torch.save = die
        else:
            real = commit.write_manifest
            commit.write_manifest = lambda path, *a, **k: die() if path.endswith("last.ckpt") else real(path, *a, **k)
    ckpt.epoch_start()
    ckpt.step_end()
    ckpt.epoch_end()
"""


@pytest.mark.parametrize("crash_in", ["torch.save", "write_manifest"])
def test_a_crash_while_overwriting_the_only_checkpoint_leaves_the_old_one_committed(
    tmp_path: Path, crash_in: str
) -> None:
    repo = Path(__file__).resolve().parents[1]
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_OVERWRITE, str(tmp_path), crash_in],
        cwd=repo, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert read_manifest(str(tmp_path / "last.ckpt")) is None  # the overwrite was under way

    fresh, _ = only_last(tmp_path)  # the next start
    assert fresh.find_checkpoint("last") == previous_path(str(tmp_path / "last.ckpt"))
    report = fresh.restore("last")
    assert report is not None and report.global_step == 1


def test_the_kept_previous_version_goes_once_the_overwrite_is_committed(tmp_path: Path) -> None:
    ckpt, _ = only_last(tmp_path)
    step(ckpt)
    step(ckpt)
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "last.ckpt.manifest.json"]
    manifest = read_manifest(str(tmp_path / "last.ckpt"))
    assert manifest is not None and manifest.global_step == 2


def test_a_previous_version_left_by_a_crash_after_the_commit_is_removed_at_start(tmp_path: Path) -> None:
    ckpt, _ = only_last(tmp_path)
    step(ckpt)
    # the state a crash leaves right after the new commit and before the kept copy is dropped
    kept = commit.keep_previous(str(tmp_path / "last.ckpt"))
    assert kept is not None and os.path.exists(kept)
    only_last(tmp_path)  # next start: last.ckpt is committed, so the kept copy is not needed
    assert not os.path.exists(kept)
    assert read_manifest(str(tmp_path / "last.ckpt")) is not None


def resumed_from_kept_copy(run: Callable[[], Checkpointer], last: str) -> Checkpointer:
    """One step saved by a first run; then the state a kill leaves once the overwrite of ``last``
    uncommitted it; then a second run resumed from ``last``'s kept copy, its loop started."""
    step(run())
    kept = commit.keep_previous(last)
    catalog.remove_manifest(last)
    assert kept is not None
    second = run()
    report = second.restore("last")
    assert report is not None and report.path == kept
    second.fit_start()
    return second


@pytest.mark.parametrize("save_last", [True, "link"])
def test_a_run_resumed_from_the_kept_previous_version_writes_last_again_and_drops_it(
    tmp_path: Path, save_last: bool | str
) -> None:
    """A kill between uncommitting ``last.ckpt`` and committing its new version: the next run
    resumes from ``.last.ckpt.ckpthooks-prev``. Its saves must write ``last.ckpt`` again (not
    ``last-v1.ckpt`` beside the uncommitted one), and the kept copy must go once they commit."""

    def run() -> Checkpointer:
        mc = ModelCheckpoint(dirpath=tmp_path, save_top_k=1, every_n_train_steps=1, save_last=save_last)
        return Checkpointer(tmp_path, callbacks=[mc]).track(model=TinyNet())

    last = str(tmp_path / "last.ckpt")
    second = resumed_from_kept_copy(run, last)
    for global_step in (2, 3):
        step(second)  # the first commit of last.ckpt already drops the kept copy
        names = sorted(os.listdir(tmp_path))
        assert not [n for n in names if n.startswith(".")], names
        assert "last-v1.ckpt" not in names
        manifest = read_manifest(last)
        assert manifest is not None and manifest.global_step == global_step


def test_a_kept_previous_version_goes_with_its_checkpoint_when_the_last_name_moves_on(tmp_path: Path) -> None:
    """With a templated ``last`` name (``CHECKPOINT_NAME_LAST = "last-{epoch}"``), a run resumed
    from ``.last-epoch=0.ckpt.ckpthooks-prev`` writes ``last-epoch=1.ckpt`` and deletes
    ``last-epoch=0.ckpt``: the kept copy of that name must go with it."""

    class Templated(ModelCheckpoint):
        CHECKPOINT_NAME_LAST = "last-{epoch}"

    def run() -> Checkpointer:
        mc = Templated(dirpath=tmp_path, save_top_k=0, save_last=True)
        return Checkpointer(tmp_path, callbacks=[mc]).track(model=TinyNet())

    second = resumed_from_kept_copy(run, str(tmp_path / "last-epoch=0.ckpt"))
    step(second)
    names = sorted(os.listdir(tmp_path))
    assert names == ["last-epoch=1.ckpt", "last-epoch=1.ckpt.manifest.json"], names
