"""What a restore reports and tolerates: metadata is not "restored", the default policy may start fresh."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckpthooks import Checkpointer, MissingStateError, ModelCheckpoint, hookimpl
from ckpthooks._plugin_host import PluginHost
from tests.helpers import CountingCallback, TinyNet


def test_hyperparameters_are_not_listed_as_restored(tmp_path: Path) -> None:
    Checkpointer(tmp_path, enable_checkpointing=False).track(model=torch.nn.Linear(2, 2)).save_checkpoint(
        tmp_path / "plain.ckpt"
    )
    report = Checkpointer(tmp_path, enable_checkpointing=False).track(model=torch.nn.Linear(2, 2)).restore(
        tmp_path / "plain.ckpt"
    )
    assert report is not None and "hyperparameters" not in report.restored
    Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet()).save_checkpoint(tmp_path / "hp.ckpt")
    report = Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet()).restore(tmp_path / "hp.ckpt")
    assert report is not None and report.restored[0] == "model" and "hyperparameters" not in report.restored


def test_the_default_policy_may_start_fresh_from_a_file_saved_without_it(tmp_path: Path) -> None:
    Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet()).save_checkpoint(tmp_path / "a.ckpt")
    ckpt = Checkpointer(tmp_path).track(model=TinyNet())  # adds the default ModelCheckpoint
    report = ckpt.restore(tmp_path / "a.ckpt")
    assert report is not None and report.missing == []


def test_a_configured_callback_missing_from_the_file_is_named_once(tmp_path: Path) -> None:
    Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet()).save_checkpoint(tmp_path / "a.ckpt")
    ckpt = Checkpointer(tmp_path, callbacks=[CountingCallback()], enable_checkpointing=False).track(model=TinyNet())
    with pytest.raises(MissingStateError) as info:
        ckpt.restore(tmp_path / "a.ckpt")
    assert info.value.names == ("callbacks['CountingCallback']",)


def test_a_plugin_model_checkpoint_replaces_the_default_one(tmp_path: Path) -> None:
    class Policy:
        @hookimpl
        def register_policies(self, checkpointer: Checkpointer) -> list[ModelCheckpoint]:
            return [ModelCheckpoint(dirpath=tmp_path / "plugin", monitor="loss")]

    host = PluginHost(load_entry_points=False)
    host.register(Policy(), "policy")
    ckpt = Checkpointer(tmp_path, plugin_host=host)
    assert [(type(cb).__name__, cb.monitor) for cb in ckpt.callbacks] == [("ModelCheckpoint", "loss")]


def test_last_ignores_other_runs_in_subfolders_of_the_root(tmp_path: Path) -> None:
    other = Checkpointer(tmp_path / "other-run", enable_checkpointing=False).track(model=TinyNet())
    other.progress.global_step = 100
    other.save_checkpoint(tmp_path / "other-run" / "far-ahead.ckpt")
    mine = Checkpointer(tmp_path).track(model=TinyNet())
    assert mine.find_checkpoint("last") is None
    mine.progress.global_step = 3
    mine.save_checkpoint(tmp_path / "manual.ckpt")
    assert mine.find_checkpoint("last") == str(tmp_path / "manual.ckpt")
