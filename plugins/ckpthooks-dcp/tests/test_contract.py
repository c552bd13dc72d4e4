"""The storage contract every ckpthooks backend passes, run against DCPCheckpointIO in one process.

The contract reads a checkpoint's bytes as one file; a DCP checkpoint is a folder, so the four
checks that do are replaced below by their folder equivalents.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from ckpthooks import CorruptCheckpointError
from ckpthooks.plugin import CheckpointIO, PluginHost, SaveResult, join_path, normalize_path
from ckpthooks.testing.storage_contract import CheckpointIOContract, assert_same_checkpoint, realistic_checkpoint

from ckpthooks_dcp import DCPCheckpointIO
from ckpthooks_dcp.io import folder_size


class TestDCPOnLocalDisk(CheckpointIOContract):
    # every tensor is its own DCP entry: views are stored (and loaded) as separate tensors
    preserves_storage_sharing = False
    # an existing folder is moved aside, then the new one renamed in: a reader may find no folder
    # for an instant. Through the runtime the committed version stays loadable under its hidden
    # previous-version name meanwhile (see test_single_process.py).
    atomic_overwrite = False

    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        return DCPCheckpointIO()

    def test_save_result_reports_the_size_and_checksum_of_the_stored_bytes(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        super().test_save_result_reports_the_size_and_checksum_of_the_stored_bytes(
            checkpoint_io, tmp_url, storage_options
        )
        result = checkpoint_io.save_checkpoint(realistic_checkpoint(), join_path(tmp_url, "again.ckpt"))
        assert isinstance(result, SaveResult)
        assert result.algorithm == "xxh3_64/files"  # every file hashed while DCP wrote it
        assert result.size == folder_size(join_path(tmp_url, "again.ckpt"))

    def test_save_overwrites_an_existing_checkpoint(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None
    ) -> None:
        path = join_path(tmp_url, "last.ckpt")
        checkpoint_io.save_checkpoint({"step": 1, "weights": torch.randn(256, 64)}, path)
        small = {"step": 2, "weights": torch.ones(2)}
        result = checkpoint_io.save_checkpoint(small, path)
        assert_same_checkpoint(checkpoint_io.load_checkpoint(path), small)
        assert isinstance(result, SaveResult) and result.size == folder_size(path)
        assert os.listdir(tmp_url) == ["last.ckpt"], "overwriting left other files behind"

    @pytest.mark.parametrize("garbage", ["empty", "random", "text", "zip-magic", "torch-pickle"])
    def test_loading_garbage_raises_corrupt_checkpoint(
        self, checkpoint_io: CheckpointIO, tmp_url: str, storage_options: Mapping[str, Any] | None, garbage: str
    ) -> None:
        # a file where a folder is expected; a truncated folder is test_a_damaged_folder_raises_...
        super().test_loading_garbage_raises_corrupt_checkpoint(checkpoint_io, tmp_url, storage_options, garbage)

    @pytest.mark.parametrize("damage", ["truncated-shard", "missing-shard", "no-metadata", "garbage-metadata"])
    def test_a_damaged_folder_raises_corrupt_checkpoint(
        self, checkpoint_io: CheckpointIO, tmp_path: Path, damage: str
    ) -> None:
        path = str(tmp_path / "damaged.ckpt")
        checkpoint_io.save_checkpoint(realistic_checkpoint(), path)
        [shard] = [name for name in os.listdir(path) if name.endswith(".distcp")]
        if damage == "truncated-shard":
            data = (tmp_path / "damaged.ckpt" / shard).read_bytes()
            (tmp_path / "damaged.ckpt" / shard).write_bytes(data[: len(data) // 2])
        elif damage == "missing-shard":
            os.remove(os.path.join(path, shard))
        elif damage == "no-metadata":
            os.remove(os.path.join(path, ".metadata"))
        else:
            (tmp_path / "damaged.ckpt" / ".metadata").write_bytes(b"not a pickle at all")
        with pytest.raises(CorruptCheckpointError):
            checkpoint_io.load_checkpoint(path)

    def test_checkpointer_saves_verifies_and_restores_through_this_backend(
        self,
        checkpoint_io: CheckpointIO,
        tmp_url: str,
        storage_options: Mapping[str, Any] | None,
        plugin_host: PluginHost,
    ) -> None:
        from ckpthooks import Checkpointer
        from ckpthooks.plugin import verify_checkpoint

        def checkpointer(seed: int) -> tuple[Checkpointer, torch.nn.Module, torch.optim.Optimizer]:
            torch.manual_seed(seed)
            model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            model(torch.randn(8, 4)).pow(2).mean().backward()
            optimizer.step()
            ckpt = Checkpointer(
                tmp_url, enable_checkpointing=False, checkpoint_io=checkpoint_io, plugin_host=plugin_host
            )
            return ckpt.track(model=model, optimizers=optimizer), model, optimizer

        saver, model, optimizer = checkpointer(0)
        saver.progress.epoch, saver.progress.global_step = 2, 30
        path = join_path(tmp_url, "epoch=2-step=30.ckpt")
        manifest = saver.save_checkpoint(path)
        assert manifest is not None and manifest.size == folder_size(path)
        verify_checkpoint(path, None, "full", storage_options)

        restorer, fresh_model, fresh_optimizer = checkpointer(1)
        report = restorer.restore("last", must_exist=True)
        assert report is not None and report.path == normalize_path(path)
        assert (report.epoch, report.global_step) == (2, 30)
        assert report.missing == [] and report.unexpected == []
        assert_same_checkpoint(fresh_model.state_dict(), model.state_dict(), "state_dict")
        assert_same_checkpoint(fresh_optimizer.state_dict(), optimizer.state_dict(), "optimizer")
