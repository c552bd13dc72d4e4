"""Tests of the example plugin, written with the fixtures of the ``ckpthooks.testing`` pytest plugin
(loaded automatically once ckpthooks is installed)."""

from __future__ import annotations

import ckpthooks_example_plugin
import pytest
import torch
from click.testing import CliRunner

from ckpthooks import Checkpointer, StorageError
from ckpthooks.plugin import cli_main as main
from ckpthooks.plugin import read_manifest
from ckpthooks.testing.faults import disk_full


def test_a_resume_gets_the_run_id_back(tmp_path, register_plugin, monkeypatch):
    monkeypatch.delenv("RUN_ID", raising=False)  # each new run gets a fresh id
    register_plugin(ckpthooks_example_plugin)
    first = Checkpointer(tmp_path, enable_checkpointing=False)
    first.save_checkpoint(tmp_path / "a.ckpt")

    second = Checkpointer(tmp_path, enable_checkpointing=False)
    assert ckpthooks_example_plugin.run_id(second) != ckpthooks_example_plugin.run_id(first)
    second.restore(tmp_path / "a.ckpt")
    assert ckpthooks_example_plugin.run_id(second) == ckpthooks_example_plugin.run_id(first)


def test_the_file_records_where_it_was_saved(tmp_path, register_plugin):
    register_plugin(ckpthooks_example_plugin, name="runid")
    Checkpointer(tmp_path, enable_checkpointing=False).save_checkpoint(tmp_path / "a.ckpt")

    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert checkpoint["runid_saved_on"]["rank"] == 0
    assert "run_id" in checkpoint["ckpthooks"]["components"]
    assert "runid" in checkpoint["ckpthooks"]["plugins"]


def test_without_the_plugin_there_is_no_run_id(tmp_path, ckpthooks_host):
    checkpointer = Checkpointer(tmp_path, enable_checkpointing=False)
    assert all(c.name != "run_id" for c in checkpointer.components)


def test_the_runid_command_prints_the_stored_id(tmp_path, register_plugin, monkeypatch):
    monkeypatch.setenv("RUN_ID", "run-1234")
    register_plugin(ckpthooks_example_plugin)
    Checkpointer(tmp_path, enable_checkpointing=False).save_checkpoint(tmp_path / "a.ckpt")
    main.reset_plugin_commands()  # the command list is cached per process
    result = CliRunner().invoke(main, ["runid", str(tmp_path / "a.ckpt")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "run-1234"


def test_a_failed_save_does_not_commit(faulty_fs, register_plugin):
    register_plugin(ckpthooks_example_plugin)
    ckpt = Checkpointer("faulty://run", enable_checkpointing=False)
    ckpt.track(model=torch.nn.Linear(2, 2))
    with faulty_fs.inject("write", nth=1, error=disk_full()), pytest.raises(StorageError):
        ckpt.save_checkpoint("faulty://run/a.ckpt")
    assert read_manifest("faulty://run/a.ckpt") is None
