"""The storage contract every ckpthooks backend passes, run against XLACheckpointIO (CPU tensors)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ckpthooks.plugin import CheckpointIO
from ckpthooks.testing.storage_contract import CheckpointIOContract, fresh_memory_url

from ckpthooks_xla import XLACheckpointIO


class TestXLACheckpointIOOnLocalDisk(CheckpointIOContract):
    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        return XLACheckpointIO()


class TestXLACheckpointIOInMemory(TestXLACheckpointIOOnLocalDisk):
    atomic_overwrite = False  # fsspec's memory filesystem publishes a file while it is written

    @pytest.fixture
    def checkpoint_io(self) -> CheckpointIO:
        return XLACheckpointIO(checksum_algorithm="crc32")

    @pytest.fixture
    def tmp_url(self) -> Iterator[str]:
        with fresh_memory_url() as url:
            yield url
