"""Checksums: the default algorithm, and local files hashed through a memory map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckpthooks._io import hashing
from ckpthooks._io.hashing import hash_local_file, hash_stream, mapped_chunks, read_chunks


def test_xxh3_is_the_default_because_xxhash_is_a_dependency() -> None:
    assert hashing.default_algorithm() == "xxh3_64"
    assert hashing.available_algorithms() == ("xxh3_64", "crc32")


@pytest.mark.parametrize("size", [0, 1, hashing.CHUNK - 1, hashing.CHUNK, 2 * hashing.CHUNK + 12345])
@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32"])
def test_a_mapped_file_hashes_like_the_stream_of_its_bytes(tmp_path: Path, size: int, algorithm: str) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    reported: list[int] = []
    assert hash_local_file(str(path), algorithm, reported.append) == hash_stream([data], algorithm)
    assert sum(reported) == size
    assert all(n <= hashing.CHUNK for n in reported)


def test_mapped_chunks_are_views_without_copies(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc" * 1000)
    with open(path, "rb") as handle:
        chunks = mapped_chunks(handle, chunk_size=1024)
        first = next(chunks)
        assert isinstance(first, memoryview) and first.readonly
        assert bytes(first) == (b"abc" * 1000)[:1024]
        chunks.close()  # an abandoned iteration unmaps cleanly


def test_a_file_that_cannot_be_mapped_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(3 * 1024 + 5)
    path.write_bytes(data)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("no mapping here")

    monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    with open(path, "rb") as handle:
        assert b"".join(bytes(c) for c in mapped_chunks(handle, chunk_size=1024)) == data
    with open(path, "rb") as handle:
        assert hash_stream(read_chunks(handle), "crc32") == hash_local_file(str(path), "crc32")


def test_a_folder_checksum_changes_with_any_file_s_bytes_name_presence_or_place(tmp_path: Path) -> None:
    from ckpthooks._io.hashing import folder_algorithm, folder_base, hash_local_folder

    assert folder_algorithm("xxh3_64") == "xxh3_64/files"
    assert folder_base("xxh3_64/files") == "xxh3_64" and folder_base("xxh3_64") is None
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 1000)
    (folder / "sub" / "b.bin").write_bytes(b"b" * 10)
    (folder / "empty").write_bytes(b"")
    size, digest = hash_local_folder(str(folder), "xxh3_64")
    assert size == 1010
    assert hash_local_folder(str(folder), "xxh3_64") == (size, digest)  # deterministic

    seen = {digest}

    def changed() -> str:
        now = hash_local_folder(str(folder), "xxh3_64")[1]
        assert now not in seen
        seen.add(now)
        return now

    (folder / "a.bin").write_bytes(b"a" * 999 + b"x")  # same size, other bytes
    changed()
    (folder / "a.bin").rename(folder / "c.bin")  # same bytes, other name
    changed()
    (folder / "c.bin").rename(folder / "sub" / "c.bin")  # same name, other folder
    changed()
    (folder / "extra").write_bytes(b"")  # an extra empty file
    changed()
    (folder / "empty").unlink()  # a missing one
    changed()
