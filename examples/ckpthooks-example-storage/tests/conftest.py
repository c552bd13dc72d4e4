from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "blobs.sqlite"


@pytest.fixture
def options(database: Path) -> dict[str, str]:
    return {"database": str(database)}


@pytest.fixture
def root() -> Iterator[str]:
    yield f"sqlblob://runs/run-{uuid.uuid4().hex[:8]}"
