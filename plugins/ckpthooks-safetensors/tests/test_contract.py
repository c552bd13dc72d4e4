"""The storage contract every ckpthooks backend passes, run against SafetensorsCheckpointIO."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ckpthooks.plugin import CheckpointIO
from ckpthooks.testing.storage_contract import CheckpointIOContract, fresh_memory_url

from ckpthooks_safetensors import SafetensorsCheckpointIO


class TestSafetensorsOnLocalDisk(CheckpointIOContract):
    supports_pickle = False  # the format holds no pickle; a pickle file is refused as corrupt
    preserves_storage_sharing = False  # safetensors refuses shared storage: views are stored as copies

    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        return SafetensorsCheckpointIO()


class TestSafetensorsInMemory(TestSafetensorsOnLocalDisk):
    atomic_overwrite = False  # fsspec's memory filesystem publishes a file while it is written

    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        return SafetensorsCheckpointIO(checksum_algorithm="crc32")

    @pytest.fixture
    def tmp_url(self) -> Iterator[str]:
        with fresh_memory_url() as url:
            yield url
