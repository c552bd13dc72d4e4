"""Manual saves (save_checkpoint/restore with explicit paths), unsafe state, and the checkpoint hooks."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpthooks
from ckpthooks import (
    Callback,
    Checkpointer,
    CheckpointNotFoundError,
    Manifest,
    UnsafeStateError,
    hookimpl,
)
from tests.helpers import StatefulDataModule, StatefulTensorHolder, TinyNet


def checkpointer(root: Path, **options: Any) -> Checkpointer:
    return Checkpointer(default_root_dir=root, enable_checkpointing=False, **options)


def at_step(ckpt: Checkpointer, steps: int, epoch: int = 0) -> Checkpointer:
    """Advance the loop counters by ``steps`` training steps in ``epoch``."""
    ckpt.epoch_start(epoch)
    for _ in range(steps):
        ckpt.step_end()
    return ckpt


# --------------------------------------------------------------------------- manifest


def test_save_checkpoint_returns_a_manifest(tmp_path: Path) -> None:
    ckpt = at_step(checkpointer(tmp_path).track(model=TinyNet()), 3)
    manifest = ckpt.save_checkpoint(tmp_path / "manual.ckpt")
    assert isinstance(manifest, Manifest)
    assert manifest.file == "manual.ckpt"
    assert manifest.global_step == 3


def test_manifest_file_records_size_epoch_step_and_metrics(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    at_step(ckpt, 2, epoch=0)
    ckpt.epoch_end()
    at_step(ckpt, 3, epoch=1)
    ckpt.log("val_loss", 0.5)
    ckpt.log("acc", torch.tensor(0.75))
    path = tmp_path / "manual.ckpt"
    ckpt.save_checkpoint(path)

    manifest_file = tmp_path / "manual.ckpt.manifest.json"
    assert manifest_file.is_file()
    data = json.loads(manifest_file.read_text())
    assert data["size"] == os.path.getsize(path)
    assert data["epoch"] == 1
    assert data["global_step"] == 5
    assert data["metrics"] == {"val_loss": 0.5, "acc": 0.75}
    assert data["file"] == "manual.ckpt"


def test_manifest_paths_are_relative(tmp_path: Path) -> None:
    checkpointer(tmp_path).track(model=TinyNet()).save_checkpoint(tmp_path / "sub" / "m.ckpt")
    text = (tmp_path / "sub" / "m.ckpt.manifest.json").read_text()
    assert str(tmp_path) not in text


def test_save_leaves_only_the_checkpoint_and_its_manifest(tmp_path: Path) -> None:
    checkpointer(tmp_path).track(model=TinyNet()).save_checkpoint(tmp_path / "m.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["m.ckpt", "m.ckpt.manifest.json"]


def test_saving_again_to_the_same_path_replaces_and_recommits(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    path = tmp_path / "m.ckpt"
    ckpt.save_checkpoint(path)
    at_step(ckpt, 4)
    ckpt.save_checkpoint(path)
    data = json.loads((tmp_path / "m.ckpt.manifest.json").read_text())
    assert data["global_step"] == 4
    assert data["size"] == os.path.getsize(path)
    assert torch.load(path, weights_only=True)["global_step"] == 4


# --------------------------------------------------------------------------- restore: not found / last


def test_restore_of_missing_explicit_path_raises_checkpoint_not_found(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    with pytest.raises(CheckpointNotFoundError, match=r"missing\.ckpt"):
        ckpt.restore(tmp_path / "missing.ckpt")


def test_restore_last_without_checkpoints_starts_fresh(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    assert ckpt.restore("last") is None
    assert ckpt.global_step == 0
    assert ckpt.resumed_from is None


def test_restore_last_with_must_exist_raises_when_there_is_none(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    with pytest.raises(CheckpointNotFoundError, match="last"):
        ckpt.restore("last", must_exist=True)


def test_restore_last_picks_highest_global_step_not_newest_file(tmp_path: Path) -> None:
    saver = checkpointer(tmp_path).track(model=TinyNet())
    at_step(saver, 10)
    saver.save_checkpoint(tmp_path / "step10.ckpt")
    saver.progress.global_step = 4  # e.g. an older run position written afterwards
    saver.save_checkpoint(tmp_path / "step4.ckpt")
    # make the step-4 file the newest by mtime too, beyond filesystem timestamp resolution
    now = time.time()
    os.utime(tmp_path / "step10.ckpt", (now - 100, now - 100))
    os.utime(tmp_path / "step4.ckpt", (now, now))

    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    report = ckpt.restore("last")
    assert report is not None
    assert report.path == str(tmp_path / "step10.ckpt")
    assert ckpt.global_step == 10


def test_restore_last_ignores_uncommitted_files(tmp_path: Path) -> None:
    saver = checkpointer(tmp_path).track(model=TinyNet())
    at_step(saver, 2)
    saver.save_checkpoint(tmp_path / "committed.ckpt")
    at_step(saver, 5)
    saver.save_checkpoint(tmp_path / "uncommitted.ckpt")
    os.remove(tmp_path / "uncommitted.ckpt.manifest.json")

    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    report = ckpt.restore("last")
    assert report is not None
    assert report.path == str(tmp_path / "committed.ckpt")


# --------------------------------------------------------------------------- unsafe state on save


class Opaque:
    """A custom class: torch.load(weights_only=True) could not load it back."""


class StateWith:
    def __init__(self, value: Any) -> None:
        self.value = value

    def state_dict(self) -> dict[str, Any]:
        return {"count": 1, "nested": {"inner": self.value}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(argparse.Namespace(lr=0.1), "argparse.Namespace"), (Opaque(), "Opaque")],
    ids=["namespace", "custom-class"],
)
def test_unsafe_tracked_state_raises_unsafe_state_error_naming_its_path(
    tmp_path: Path, value: Any, type_name: str
) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet(), bad=StateWith(value))
    with pytest.raises(UnsafeStateError) as info:
        ckpt.save_checkpoint(tmp_path / "x.ckpt")
    message = str(info.value)
    assert "checkpoint['ckpthooks']['components']['bad']['nested']['inner']" in message
    assert type_name in message


def test_unsafe_state_error_is_a_checkpoint_error(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(bad=StateWith(Opaque()))
    with pytest.raises(ckpthooks.CheckpointError):
        ckpt.save_checkpoint(tmp_path / "x.ckpt")


def test_unsafe_state_writes_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    folder.mkdir()
    ckpt = checkpointer(folder).track(model=TinyNet(), bad=StateWith(argparse.Namespace(a=1)))
    with pytest.raises(UnsafeStateError):
        ckpt.save_checkpoint(folder / "x.ckpt")
    assert os.listdir(folder) == []  # no checkpoint, no manifest, no temporary file


def test_unsafe_state_leaves_an_existing_checkpoint_committed(tmp_path: Path) -> None:
    holder = StateWith(1)
    ckpt = checkpointer(tmp_path).track(model=TinyNet(), bad=holder)
    path = tmp_path / "x.ckpt"
    ckpt.save_checkpoint(path)
    before = path.read_bytes()
    holder.value = Opaque()
    with pytest.raises(UnsafeStateError):
        ckpt.save_checkpoint(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["x.ckpt", "x.ckpt.manifest.json"]
    holder.value = 1
    assert checkpointer(tmp_path).track(model=TinyNet(), bad=holder).restore("last") is not None


def test_unsafe_value_added_by_a_hook_is_refused(tmp_path: Path) -> None:
    class AddsNamespace(Callback):
        def on_save_checkpoint(self, checkpointer: Any, checkpoint: dict[str, Any]) -> None:
            checkpoint["cli_args"] = argparse.Namespace(x=1)

    ckpt = checkpointer(tmp_path, callbacks=[AddsNamespace()]).track(model=TinyNet())
    with pytest.raises(UnsafeStateError, match=r"checkpoint\['cli_args'\]"):
        ckpt.save_checkpoint(tmp_path / "x.ckpt")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- hooks: model


class HookedNet(TinyNet):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loaded: list[Any] = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_note"] = {"saved_by": "model", "hidden": self.l1.out_features}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded.append(checkpoint.get("model_note"))


def test_model_on_save_checkpoint_adds_key_to_the_file(tmp_path: Path) -> None:
    checkpointer(tmp_path).track(model=HookedNet()).save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert checkpoint["model_note"] == {"saved_by": "model", "hidden": 8}


def test_model_on_load_checkpoint_sees_what_it_saved(tmp_path: Path) -> None:
    checkpointer(tmp_path).track(model=HookedNet()).save_checkpoint(tmp_path / "m.ckpt")
    model = HookedNet()
    checkpointer(tmp_path / "resume").track(model=model).restore(tmp_path / "m.ckpt")
    assert model.loaded == [{"saved_by": "model", "hidden": 8}]


# --------------------------------------------------------------------------- hooks: datamodule


class HookedDataModule(StatefulDataModule):
    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.loaded: list[Any] = []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["datamodule_note"] = [self.seed, "dm"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loaded.append(checkpoint.get("datamodule_note"))


def test_datamodule_on_save_checkpoint_adds_key_to_the_file(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet(), datamodule=HookedDataModule(seed=5))
    ckpt.save_checkpoint(tmp_path / "m.ckpt")
    assert torch.load(tmp_path / "m.ckpt", weights_only=True)["datamodule_note"] == [5, "dm"]


def test_datamodule_on_load_checkpoint_sees_what_it_saved(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet(), datamodule=HookedDataModule(seed=5))
    ckpt.save_checkpoint(tmp_path / "m.ckpt")
    datamodule = HookedDataModule(seed=0)
    resume = checkpointer(tmp_path / "resume").track(model=TinyNet(), datamodule=datamodule)
    resume.restore(tmp_path / "m.ckpt")
    assert datamodule.loaded == [[5, "dm"]]
    assert datamodule.seed == 5


# --------------------------------------------------------------------------- hooks: callbacks


class HookedCallback(Callback):
    def __init__(self) -> None:
        self.saved_with: list[Any] = []
        self.loaded: list[Any] = []

    def on_save_checkpoint(self, checkpointer: Any, checkpoint: dict[str, Any]) -> None:
        self.saved_with.append(checkpointer)
        checkpoint["callback_note"] = {"step": checkpointer.global_step}

    def on_load_checkpoint(self, checkpointer: Any, checkpoint: dict[str, Any]) -> None:
        self.loaded.append((checkpointer, checkpoint.get("callback_note")))


def test_callback_on_save_checkpoint_gets_checkpointer_and_edits_the_file(tmp_path: Path) -> None:
    callback = HookedCallback()
    ckpt = at_step(checkpointer(tmp_path, callbacks=[callback]).track(model=TinyNet()), 6)
    ckpt.save_checkpoint(tmp_path / "m.ckpt")
    assert callback.saved_with == [ckpt]
    assert torch.load(tmp_path / "m.ckpt", weights_only=True)["callback_note"] == {"step": 6}


def test_callback_on_load_checkpoint_gets_checkpointer_and_saved_key(tmp_path: Path) -> None:
    ckpt = at_step(checkpointer(tmp_path, callbacks=[HookedCallback()]).track(model=TinyNet()), 6)
    ckpt.save_checkpoint(tmp_path / "m.ckpt")
    callback = HookedCallback()
    resume = checkpointer(tmp_path / "resume", callbacks=[callback]).track(model=TinyNet())
    resume.restore(tmp_path / "m.ckpt")
    assert callback.loaded == [(resume, {"step": 6})]


def test_callback_on_save_checkpoint_not_called_for_weights_only_save(tmp_path: Path) -> None:
    callback = HookedCallback()
    ckpt = checkpointer(tmp_path, callbacks=[callback]).track(model=TinyNet())
    ckpt.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    assert callback.saved_with == []
    assert "callback_note" not in torch.load(tmp_path / "w.ckpt", weights_only=True)


# --------------------------------------------------------------------------- hooks: plugins


class RunIdPlugin:
    """A plugin object whose hook implementations add and read a top-level key."""

    def __init__(self) -> None:
        self.loaded: list[Any] = []
        self.seen_model_note: list[Any] = []

    @hookimpl
    def on_save_checkpoint(self, checkpointer: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["run_id"] = {"id": "run-42", "step": checkpointer.global_step}
        self.seen_model_note.append(checkpoint.get("model_note"))

    @hookimpl
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # a subset of the arguments
        self.loaded.append(checkpoint.get("run_id"))


class MigratingPlugin:
    """Edits loaded checkpoints in place before any state is restored (a layout migration)."""

    @hookimpl
    def on_load_checkpoint(self, checkpointer: Any, checkpoint: dict[str, Any]) -> None:
        components = checkpoint["ckpthooks"]["components"]
        if "old_name" in components:
            components["holder"] = components.pop("old_name")


def test_plugin_on_save_checkpoint_key_is_in_the_written_file(
    tmp_path: Path, register_plugin: Callable[..., str]
) -> None:
    register_plugin(RunIdPlugin(), name="run-id")
    ckpt = at_step(checkpointer(tmp_path).track(model=TinyNet()), 2)
    ckpt.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert checkpoint["run_id"] == {"id": "run-42", "step": 2}


def test_plugin_on_load_checkpoint_sees_the_key_it_saved(
    tmp_path: Path, register_plugin: Callable[..., str]
) -> None:
    plugin = RunIdPlugin()
    register_plugin(plugin, name="run-id")
    at_step(checkpointer(tmp_path).track(model=TinyNet()), 2).save_checkpoint(tmp_path / "m.ckpt")
    report = checkpointer(tmp_path / "resume").track(model=TinyNet()).restore(tmp_path / "m.ckpt")
    assert report is not None
    assert plugin.loaded == [{"id": "run-42", "step": 2}]


def test_plugin_on_save_checkpoint_runs_after_model_hook(
    tmp_path: Path, register_plugin: Callable[..., str]
) -> None:
    plugin = RunIdPlugin()
    register_plugin(plugin, name="run-id")
    checkpointer(tmp_path).track(model=HookedNet()).save_checkpoint(tmp_path / "m.ckpt")
    assert plugin.seen_model_note == [{"saved_by": "model", "hidden": 8}]


def test_plugin_on_load_checkpoint_edits_apply_before_state_is_restored(
    tmp_path: Path, register_plugin: Callable[..., str]
) -> None:
    old = StatefulTensorHolder(fill=3.0)
    checkpointer(tmp_path).track(old_name=old).save_checkpoint(tmp_path / "old.ckpt")
    register_plugin(MigratingPlugin(), name="migrate")
    holder = StatefulTensorHolder(fill=0.0)
    report = checkpointer(tmp_path / "resume").track(holder=holder).restore(tmp_path / "old.ckpt")
    assert report is not None
    assert "holder" in report.restored
    assert torch.equal(holder.value, torch.full((3,), 3.0))


def test_unregistered_plugin_hooks_no_longer_run(
    tmp_path: Path, ckpthooks_host: ckpthooks.PluginHost
) -> None:
    name = ckpthooks_host.register(RunIdPlugin(), name="run-id")
    ckpthooks_host.unregister(name)
    checkpointer(tmp_path).track(model=TinyNet()).save_checkpoint(tmp_path / "m.ckpt")
    assert "run_id" not in torch.load(tmp_path / "m.ckpt", weights_only=True)
