"""The sqlblob:// filesystem: registered through its entry point, files as rows, and the
ckpthooks storage contract for the default backend over it."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import fsspec
import pytest

from ckpthooks import TorchCheckpointIO
from ckpthooks.testing.storage_contract import CheckpointIOContract


def rows(database: Path) -> dict[str, bytes]:
    with sqlite3.connect(database) as db:
        return {path: bytes(data) for path, data in db.execute("SELECT path, data FROM blobs")}


def test_the_scheme_is_registered_by_the_installed_entry_point(options: dict[str, str]) -> None:
    from importlib.metadata import entry_points

    (spec,) = [ep for ep in entry_points(group="fsspec.specs") if ep.name == "sqlblob"]
    assert spec.value == "ckpthooks_example_storage.filesystem:SQLBlobFileSystem"
    fs = fsspec.filesystem("sqlblob", **options)  # no import of the package by the caller
    assert type(fs).__name__ == "SQLBlobFileSystem"


def test_files_are_rows_of_the_database(database: Path, options: dict[str, str]) -> None:
    fs = fsspec.filesystem("sqlblob", **options)
    fs.pipe_file("sqlblob://a/b/c.bin", b"hello")
    with fs.open("sqlblob://a/d.bin", "wb") as handle:
        handle.write(b"x" * 10)
        handle.write(b"y" * 5)
    assert rows(database) == {"a/b/c.bin": b"hello", "a/d.bin": b"x" * 10 + b"y" * 5}
    assert fs.ls("sqlblob://a", detail=False) == ["a/b", "a/d.bin"]
    assert fs.info("a/b")["type"] == "directory" and fs.size("a/d.bin") == 15
    assert fs.cat_file("a/d.bin", start=8, end=12) == b"xxyy"
    with fs.open("a/d.bin", "rb") as handle:
        handle.seek(9)
        assert handle.read(3) == b"xyy"
    assert sorted(fs.glob("sqlblob://a/**/*.bin")) == ["a/b/c.bin", "a/d.bin"]
    fs.rm("sqlblob://a", recursive=True)
    assert rows(database) == {} and not fs.exists("a/d.bin")
    with pytest.raises(FileNotFoundError):
        fs.info("a")


def test_a_write_is_all_or_nothing(database: Path, options: dict[str, str]) -> None:
    fs = fsspec.filesystem("sqlblob", **options)
    fs.pipe_file("f.bin", b"old")
    handle = fs.open("f.bin", "wb", block_size=5 * 2**20)
    handle.write(b"n" * (6 * 2**20))  # more than one block: a part is buffered, not published
    assert rows(database)["f.bin"] == b"old"
    handle.discard()  # an aborted upload
    handle.closed = True
    assert rows(database)["f.bin"] == b"old"


def test_threads_use_their_own_connections(database: Path, options: dict[str, str]) -> None:
    fs = fsspec.filesystem("sqlblob", **options)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(20):
                fs.pipe_file(f"t{n}/{i}.bin", bytes([n]) * 100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(rows(database)) == 80


def test_a_database_is_required() -> None:
    with pytest.raises(ValueError, match="needs a database file"):
        fsspec.filesystem("sqlblob", skip_instance_cache=True)


class TestTorchCheckpointIOOnSQLBlob(CheckpointIOContract):
    """The ckpthooks storage contract (ckpthooks.testing.storage_contract) over sqlblob://."""

    @pytest.fixture
    def checkpoint_io(self) -> Any:
        return TorchCheckpointIO()

    @pytest.fixture
    def tmp_url(self) -> str:
        return f"sqlblob://contract/{uuid.uuid4().hex}"

    @pytest.fixture
    def storage_options(self, options: dict[str, str]) -> dict[str, str]:
        return options
