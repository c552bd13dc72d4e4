"""The storage contract, run against the built-in torch backend (local paths and memory:// URLs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest

from ckpthooks import TorchCheckpointIO
from ckpthooks._io.base import CheckpointIO
from ckpthooks.testing.storage_contract import CheckpointIOContract, fresh_memory_url


class TestTorchCheckpointIOOnLocalDisk(CheckpointIOContract):
    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        return TorchCheckpointIO()


class TestTorchCheckpointIOInMemory(CheckpointIOContract):
    # fsspec's memory filesystem publishes a file as soon as it is opened for writing; the commit
    # manifest, written after the data, is what protects readers there
    atomic_overwrite = False

    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        return TorchCheckpointIO(checksum_algorithm="crc32")

    @pytest.fixture
    def tmp_url(self) -> Iterator[str]:
        with fresh_memory_url() as url:
            yield url


# --------------------------------------------------------------------------- the contract catches bugs

BROKEN_BACKENDS = '''
import os
import tempfile

import pytest
import torch

from ckpthooks import SaveResult, TorchCheckpointIO
from ckpthooks._io import paths
from ckpthooks.testing.storage_contract import CheckpointIOContract


class InPlace(TorchCheckpointIO):
    """Writes straight into the target file: no temporary sibling, no rename."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            torch.save(checkpoint, handle)
        return SaveResult(size=os.path.getsize(path))

    def load_checkpoint(self, path, map_location=None, storage_options=None, weights_only=True):
        # read a snapshot (a memory map of a file truncated in place could crash the reader)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return super().load_checkpoint(path, map_location, storage_options, weights_only)
        with tempfile.TemporaryDirectory() as folder:
            copy = os.path.join(folder, "snapshot.ckpt")
            with open(copy, "wb") as handle:
                handle.write(data)
            return super().load_checkpoint(copy, map_location, storage_options, weights_only)


class Lossy(TorchCheckpointIO):
    """Stores bfloat16 tensors as float32."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        def convert(value):
            if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
                return value.float()
            if type(value) is dict:
                return {key: convert(item) for key, item in value.items()}
            return value

        return super().save_checkpoint(convert(checkpoint), path, storage_options)


class PlainErrors(TorchCheckpointIO):
    """Lets torch's own exceptions out instead of ckpthooks' specific ones."""

    def load_checkpoint(self, path, map_location=None, storage_options=None, weights_only=True):
        return torch.load(paths.local_path(path), map_location=map_location, weights_only=weights_only)


class IgnoresWeightsOnly(TorchCheckpointIO):
    def load_checkpoint(self, path, map_location=None, storage_options=None, weights_only=True):
        return super().load_checkpoint(path, map_location, storage_options, weights_only=False)


class WrongSize(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        result = super().save_checkpoint(checkpoint, path, storage_options)
        return SaveResult(size=result.size - 1, checksum=None)


class LeavesTemp(TorchCheckpointIO):
    """Writes a sibling and renames it, but leaves the sibling behind when the write fails."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".partial", "wb") as handle:
            torch.save(checkpoint, handle)
        os.replace(path + ".partial", path)
        return SaveResult(size=os.path.getsize(path))


for _backend in (InPlace, Lossy, PlainErrors, IgnoresWeightsOnly, WrongSize, LeavesTemp):

    class _Contract(CheckpointIOContract):
        backend = _backend

        @pytest.fixture
        def checkpoint_io(self):
            return self.backend()

    globals()[f"Test{_backend.__name__}"] = type(f"Test{_backend.__name__}", (_Contract,), {})
'''

EXPECTED_FAILURES = {
    "InPlace": {
        "test_readers_never_see_a_partly_replaced_checkpoint",
        "test_a_failed_save_leaves_the_previous_checkpoint_and_no_stray_files",
    },
    "Lossy": {
        "test_realistic_checkpoint_round_trips_exactly",
        "test_map_location_cpu_puts_every_tensor_on_the_cpu[str]",
        "test_map_location_cpu_puts_every_tensor_on_the_cpu[device]",
    },
    "PlainErrors": {
        "test_loading_a_missing_path_raises_checkpoint_not_found",
        "test_remove_deletes_an_existing_checkpoint",
        "test_arbitrary_objects_load_only_with_weights_only_false",
        *(
            f"test_loading_garbage_raises_corrupt_checkpoint[{kind}]"
            for kind in ("empty", "random", "text", "zip-magic", "truncated")
        ),
    },
    "IgnoresWeightsOnly": {"test_arbitrary_objects_load_only_with_weights_only_false"},
    "WrongSize": {
        "test_save_result_reports_the_size_and_checksum_of_the_stored_bytes",
        "test_save_overwrites_an_existing_checkpoint",
        "test_checkpointer_saves_verifies_and_restores_through_this_backend",
    },
    "LeavesTemp": {"test_a_failed_save_leaves_the_previous_checkpoint_and_no_stray_files"},
}


@pytest.mark.slow
def test_the_contract_fails_backends_that_break_it_and_only_where_they_do(tmp_path: Path) -> None:
    (tmp_path / "test_broken_backends.py").write_text(BROKEN_BACKENDS)
    report = tmp_path / "report.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning",
         f"--junitxml={report}", "test_broken_backends.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert report.exists(), result.stdout + result.stderr
    failed: dict[str, set[str]] = {name: set() for name in EXPECTED_FAILURES}
    passed: dict[str, int] = dict.fromkeys(EXPECTED_FAILURES, 0)
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        backend = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("Test")
        outcomes = {child.tag for child in case}
        if outcomes & {"failure", "error"}:
            failed[backend].add(case.get("name", ""))
        elif "skipped" not in outcomes:
            passed[backend] += 1
    assert failed == EXPECTED_FAILURES, result.stdout[-4000:]
    assert all(count >= 10 for count in passed.values()), passed
