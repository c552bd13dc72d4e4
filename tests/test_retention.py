"""Retention: rules keep checkpoints from their manifests, one pruner deletes with the guards; with
``async_save`` a failed background save leaves the bookkeeping naming committed files only, and
``save_last="link"`` links on the save worker."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ckpthooks import (
    Callback,
    Checkpointer,
    CommittedCheckpoint,
    KeepMilestones,
    Manifest,
    ModelCheckpoint,
    Pruner,
    RetentionRule,
    TopKRule,
)
from ckpthooks._catalog import iter_committed, read_manifest, remove_manifest
from ckpthooks._commit import write_pending_marker
from ckpthooks._io.torch_io import TorchCheckpointIO
from ckpthooks._store import CheckpointStore
from ckpthooks.testing.faults import disk_full
from tests.helpers import TinyNet


def make(root: Path, policy: Callback | list[Callback] | None = None, **kwargs: Any) -> Checkpointer:
    callbacks = policy if isinstance(policy, list) else [policy] if policy is not None else []
    ckpt = Checkpointer(root, callbacks=callbacks, preemption_signals=None, **kwargs)
    ckpt.track(model=TinyNet())
    return ckpt


def committed(folder: Path) -> list[tuple[str, int]]:
    return sorted((Path(c.path).name, c.manifest.global_step) for c in iter_committed(str(folder)))


def fail_writes(monkeypatch: pytest.MonkeyPatch, name: str, nth: set[int]) -> list[str]:
    """The backend's ``nth`` writes (counted from 1) of files called ``name`` fail as on a full disk,
    before any byte of the target changes (the temporary file cannot be written); returns the names
    of every file written."""
    real = TorchCheckpointIO.save_checkpoint
    written: list[str] = []
    count = [0]

    def save(self: TorchCheckpointIO, checkpoint: dict[str, Any], path: str,
             storage_options: Mapping[str, Any] | None = None) -> Any:  # fmt: skip
        if os.path.basename(path) == name:
            count[0] += 1
            if count[0] in nth:
                raise disk_full(path)
        written.append(os.path.basename(path))
        return real(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", save)
    return written


def settle(ckpt: Checkpointer) -> None:
    """Wait for the background saves; the last one failed (``wait`` raises it, whatever
    ``on_save_error`` says), and the policy takes the failure into account."""
    with pytest.raises(OSError, match="No space left on device"):
        ckpt.wait()
    for cb in ckpt.callbacks:
        cb.teardown(ckpt)


def steps(ckpt: Checkpointer, n: int, loss: list[float] | None = None) -> None:
    for i in range(n):
        if loss is not None:
            ckpt.log("loss", loss[i])
        ckpt.step_end()


# ------------------------------------------------------------------ bug: two committed last files


def test_a_failed_background_overwrite_of_last_leaves_one_last_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_writes(monkeypatch, "last.ckpt", nth={2})  # the disk is full when step 12 rewrites last.ckpt
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=6, save_last=True)
    ckpt = make(tmp_path, policy, async_save=True, on_save_error="log")
    steps(ckpt, 18)
    ckpt.wait()
    assert committed(tmp_path) == [("last.ckpt", 18), ("step=18.ckpt", 18)]
    assert policy.last_model_path == str(tmp_path / "last.ckpt")


def test_after_a_failed_background_overwrite_last_still_names_the_committed_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_writes(monkeypatch, "last.ckpt", nth={2})
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=6, save_last=True)
    ckpt = make(tmp_path, policy, async_save=True, on_save_error="log")
    steps(ckpt, 12)
    settle(ckpt)
    assert read_manifest(str(tmp_path / "last.ckpt")).global_step == 6  # type: ignore[union-attr]
    assert policy.last_model_path == str(tmp_path / "last.ckpt")


def test_a_failed_background_save_that_left_last_uncommitted_writes_last_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=6, save_last=True)
    ckpt = make(tmp_path, policy, async_save=True, on_save_error="log")
    steps(ckpt, 6)
    ckpt.wait()
    real = CheckpointStore.save

    def save(self: CheckpointStore, checkpoint: Any, path: str, **kwargs: Any) -> Any:
        if path.endswith("last.ckpt"):  # the write replaced the bytes, then failed to commit
            remove_manifest(path)
            raise OSError(28, "No space left on device")
        return real(self, checkpoint, path, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", save)
    steps(ckpt, 6)
    settle(ckpt)
    monkeypatch.setattr(CheckpointStore, "save", real)
    steps(ckpt, 6)
    ckpt.wait()
    assert committed(tmp_path) == [("last.ckpt", 18), ("step=18.ckpt", 18)]
    assert not (tmp_path / "last-v1.ckpt").exists()


def test_a_failed_background_top_k_save_keeps_the_file_it_would_have_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = CheckpointStore.save

    def save(self: CheckpointStore, checkpoint: Any, path: str, **kwargs: Any) -> Any:
        if path.endswith("step=2.ckpt"):
            raise OSError(28, "No space left on device")
        return real(self, checkpoint, path, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", save)
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=1, every_n_train_steps=1)
    ckpt = make(tmp_path, policy, async_save=True, on_save_error="log")
    steps(ckpt, 2, loss=[3.0, 2.0])
    settle(ckpt)
    assert policy.best_k_models == {str(tmp_path / "step=1.ckpt"): 3.0}
    steps(ckpt, 1, loss=[1.0])
    ckpt.wait()
    # top-1 holds one file: the one the failed save would have replaced goes with the next one
    assert committed(tmp_path) == [("step=3.ckpt", 3)]
    assert policy.best_k_models == {str(tmp_path / "step=3.ckpt"): 1.0}


# ------------------------------------------------------------------ bug: link with async saves


def test_save_last_link_with_async_saves_hard_links_after_the_top_k_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = fail_writes(monkeypatch, "never", nth=set())
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2, save_last="link")
    ckpt = make(tmp_path, policy, async_save=True)
    steps(ckpt, 4)
    ckpt.wait()
    assert written == ["step=2.ckpt", "step=4.ckpt"]  # one write per save: last is a link
    assert os.stat(tmp_path / "last.ckpt").st_ino == os.stat(tmp_path / "step=4.ckpt").st_ino
    assert committed(tmp_path) == [("last.ckpt", 4), ("step=4.ckpt", 4)]
    assert read_manifest(str(tmp_path / "last.ckpt")).writer.endswith("#last")  # type: ignore[union-attr]


def test_with_async_saves_a_failed_top_k_save_leaves_the_linked_last_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_writes(monkeypatch, "step=4.ckpt", nth={1})
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2, save_last="link")
    ckpt = make(tmp_path, policy, async_save=True, on_save_error="log")
    steps(ckpt, 4)
    settle(ckpt)
    assert committed(tmp_path) == [("last.ckpt", 2), ("step=2.ckpt", 2)]
    assert policy.last_model_path == str(tmp_path / "last.ckpt")
    assert policy.best_model_path == str(tmp_path / "step=2.ckpt")



def test_a_top_k_save_that_failed_before_the_link_decision_leaves_the_linked_last_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same failure, with the worker quicker than the training thread (seen under load): the
    save had failed before ``last`` was decided, so ``last`` was written in full at step 4 and the
    failure went into the log instead of ``wait()``."""
    import time

    fail_writes(monkeypatch, "step=4.ckpt", nth={1})
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=2, save_last="link")
    real = ModelCheckpoint._link_after_commit

    def after_the_worker(self: ModelCheckpoint, source: str, filepath: str, replaces: str | None) -> bool:
        deadline = time.monotonic() + 10
        while source in self._in_flight and time.monotonic() < deadline:  # let the save fail first
            time.sleep(0.01)
        return real(self, source, filepath, replaces)

    monkeypatch.setattr(ModelCheckpoint, "_link_after_commit", after_the_worker)
    ckpt = make(tmp_path, policy, async_save=True, on_save_error="log")
    steps(ckpt, 4)
    settle(ckpt)
    assert committed(tmp_path) == [("last.ckpt", 2), ("step=2.ckpt", 2)]
    assert policy.last_model_path == str(tmp_path / "last.ckpt")
    assert policy.best_model_path == str(tmp_path / "step=2.ckpt")


# ------------------------------------------------------------------ rules


def checkpoint(
    path: Path, step: int, *, created: float = 0.0, writer: str | None = None, **metrics: float
) -> CommittedCheckpoint:
    manifest = Manifest(
        file=path.name, size=1, checksum=None, algorithm=None, epoch=0, global_step=step,
        metrics=dict(metrics), created=created or float(step), writer=writer,
    )  # fmt: skip
    return CommittedCheckpoint(str(path), manifest)


def test_top_k_rule_keeps_the_k_best_by_the_manifests_metric(tmp_path: Path) -> None:
    found = [checkpoint(tmp_path / f"{i}.ckpt", i, loss=v, writer="p#topk") for i, v in enumerate([3, 1, 2, 1, 5])]
    found.append(checkpoint(tmp_path / "manual.ckpt", 9, loss=0.0, writer=None))
    kept = TopKRule(2, monitor="loss", mode="min", writer="p#topk").keep(found)
    assert sorted(Path(p).name for p in kept) == ["1.ckpt", "3.ckpt"]
    assert sorted(Path(p).name for p in TopKRule(1, monitor="loss", mode="max", writer="p#topk").keep(found)) == [
        "4.ckpt"
    ]
    assert len(TopKRule(-1, writer="p#topk").keep(found)) == 5


def test_top_k_rule_without_a_monitor_keeps_the_newest(tmp_path: Path) -> None:
    found = [checkpoint(tmp_path / f"{i}.ckpt", i) for i in range(4)]
    assert sorted(Path(p).name for p in TopKRule(2).keep(found)) == ["2.ckpt", "3.ckpt"]


def test_top_k_rule_agrees_with_model_checkpoint(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=3, every_n_train_steps=1)
    ckpt = make(tmp_path, policy)
    losses = [5.0, 3.0, 4.0, 3.0, 1.0, 6.0, 2.0, 2.0, 0.5]
    found: list[CommittedCheckpoint] = []

    class Record(Callback):
        def on_checkpoint_committed(self, checkpointer: Checkpointer, path: str, manifest: Manifest) -> None:
            found.append(CommittedCheckpoint(path, manifest))

    ckpt.callbacks.append(Record())
    steps(ckpt, len(losses), loss=losses)
    rule = TopKRule(3, monitor="loss", mode="min", writer=f"{policy.state_key}#topk")
    assert set(rule.keep(found)) == set(policy.best_k_models)


def test_model_checkpoint_and_keep_milestones_are_retention_rules() -> None:
    assert isinstance(ModelCheckpoint(), RetentionRule)
    assert isinstance(KeepMilestones(every_n_train_steps=2), RetentionRule)
    assert not isinstance(Callback(), RetentionRule)


def test_a_displaced_file_goes_only_when_no_rule_keeps_it(tmp_path: Path) -> None:
    class KeepEven(Callback):
        def keep(self, checkpoints: list[CommittedCheckpoint]) -> list[str]:
            return [c.path for c in checkpoints if c.manifest.global_step % 2 == 0]

    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1)
    ckpt = make(tmp_path, [policy, KeepEven()])
    steps(ckpt, 5)
    assert committed(tmp_path) == [("step=2.ckpt", 2), ("step=4.ckpt", 4), ("step=5.ckpt", 5)]


def test_a_file_another_rule_kept_goes_once_the_rule_lets_it_go(tmp_path: Path) -> None:
    class KeepNewestOdd(Callback):
        def keep(self, checkpoints: list[CommittedCheckpoint]) -> list[str]:
            odd = [c for c in checkpoints if c.manifest.global_step % 2]
            return [max(odd, key=lambda c: c.manifest.global_step).path] if odd else []

    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1)
    ckpt = make(tmp_path, [policy, KeepNewestOdd()])
    steps(ckpt, 4)
    assert committed(tmp_path) == [("step=3.ckpt", 3), ("step=4.ckpt", 4)]  # step=1 went when step=3 came


def test_retained_files_are_remembered_across_a_resume(tmp_path: Path) -> None:
    class KeepStepTwoUntilSix(Callback):
        def keep(self, checkpoints: list[CommittedCheckpoint]) -> list[str]:
            newest = max(c.manifest.global_step for c in checkpoints)
            return [c.path for c in checkpoints if c.manifest.global_step == 2 and newest < 6]

    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1)
    ckpt = make(tmp_path, [policy, KeepStepTwoUntilSix()])
    steps(ckpt, 4)
    assert ("step=2.ckpt", 2) in committed(tmp_path)
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1)
    again = make(tmp_path, [policy, KeepStepTwoUntilSix()])
    again.restore("last")
    again.fit_start()
    steps(again, 2)
    assert committed(tmp_path) == [("step=4.ckpt", 4), ("step=6.ckpt", 6)]  # step=4: the resume file


def test_keep_milestones_as_a_rule_keeps_one_file_per_window(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1)
    ckpt = make(tmp_path, [policy, KeepMilestones(every_n_train_steps=3)])
    steps(ckpt, 7)
    assert [name for name, _ in committed(tmp_path)] == ["step=1.ckpt", "step=3.ckpt", "step=6.ckpt", "step=7.ckpt"]


# ------------------------------------------------------------------ the pruner's guards


def test_the_pruner_never_deletes_a_file_another_writer_wrote(tmp_path: Path) -> None:
    ckpt = make(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "a.ckpt", writer="someone#topk")
    assert Pruner.of(ckpt).remove(str(tmp_path / "a.ckpt"), writer="me") is False
    assert read_manifest(str(tmp_path / "a.ckpt")) is not None
    assert Pruner.of(ckpt).remove(str(tmp_path / "a.ckpt"), writer="someone") is True
    assert not (tmp_path / "a.ckpt").exists()


def test_the_pruner_never_deletes_an_uncommitted_file_for_a_writer(tmp_path: Path) -> None:
    ckpt = make(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "a.ckpt", writer="me#topk")
    remove_manifest(str(tmp_path / "a.ckpt"))
    assert Pruner.of(ckpt).remove(str(tmp_path / "a.ckpt"), writer="me") is False
    assert (tmp_path / "a.ckpt").exists()


def test_the_pruner_never_deletes_the_file_the_run_resumed_from(tmp_path: Path) -> None:
    ckpt = make(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "a.ckpt", writer="me#topk")
    ckpt.restore(tmp_path / "a.ckpt")
    assert Pruner.of(ckpt).remove(str(tmp_path / "a.ckpt"), writer="me") is False
    assert ckpt.remove_checkpoint(tmp_path / "a.ckpt") is False
    assert read_manifest(str(tmp_path / "a.ckpt")) is not None


def test_the_pruner_never_deletes_a_file_with_a_pending_marker(tmp_path: Path) -> None:
    ckpt = make(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "a.ckpt", writer="me#topk")
    write_pending_marker(str(tmp_path / "a.ckpt"))  # another save of a.ckpt is under way
    assert ckpt.remove_checkpoint(tmp_path / "a.ckpt") is False
    assert read_manifest(str(tmp_path / "a.ckpt")) is not None


def test_the_pruner_never_deletes_a_file_whose_background_save_is_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = make(tmp_path, enable_checkpointing=False, async_save=True)
    ckpt.save_checkpoint(tmp_path / "a.ckpt", writer="me#topk")
    ckpt.wait()
    release = threading.Event()
    real = CheckpointStore.save

    def slow(self: CheckpointStore, *args: Any, **kwargs: Any) -> Any:
        release.wait(10)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", slow)
    ckpt.save_checkpoint(tmp_path / "a.ckpt", writer="me#topk")  # queued: a.ckpt is written again
    try:
        assert ckpt.remove_checkpoint(tmp_path / "a.ckpt") is False
    finally:
        release.set()
    ckpt.wait()
    assert read_manifest(str(tmp_path / "a.ckpt")) is not None
    assert ckpt.remove_checkpoint(tmp_path / "a.ckpt") is True


def test_remove_checkpoint_still_honours_a_callbacks_veto(tmp_path: Path) -> None:
    class Veto(Callback):
        def retains(self, checkpointer: Checkpointer, path: str) -> bool:
            return path.endswith("a.ckpt")

    ckpt = make(tmp_path, [Veto()], enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    assert ckpt.remove_checkpoint(tmp_path / "a.ckpt") is False
    ckpt.save_checkpoint(tmp_path / "b.ckpt")
    assert ckpt.remove_checkpoint(tmp_path / "b.ckpt") is True
    assert not (tmp_path / "b.ckpt").exists() and not (tmp_path / "b.ckpt.manifest.json").exists()


def test_prune_deletes_the_candidates_no_rule_keeps(tmp_path: Path) -> None:
    ckpt = make(tmp_path, enable_checkpointing=False)
    for step in (1, 2, 3):
        ckpt.progress.global_step = step
        ckpt.log("loss", float(step))
        ckpt.save_checkpoint(tmp_path / f"{step}.ckpt", writer="me#topk")
    found = list(iter_committed(str(tmp_path)))
    removed = Pruner.of(ckpt).prune(found, [TopKRule(1, monitor="loss", writer="me#topk")], writer="me")
    assert sorted(Path(p).name for p in removed) == ["2.ckpt", "3.ckpt"]
    assert committed(tmp_path) == [("1.ckpt", 1)]


def test_a_top_k_save_neither_reads_nor_lists_the_kept_files_without_other_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=2, every_n_train_steps=1)
    ckpt = make(tmp_path, policy)
    steps(ckpt, 3, loss=[3.0, 2.0, 1.0])
    reads: list[str] = []
    import ckpthooks._retention as retention

    real = retention.read_manifest

    def counting(path: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(retention, "read_manifest", counting)
    steps(ckpt, 1, loss=[0.5])
    assert reads == ["step=2.ckpt"]  # the displaced file only, not the ones kept
    assert committed(tmp_path) == [("step=3.ckpt", 3), ("step=4.ckpt", 4)]
