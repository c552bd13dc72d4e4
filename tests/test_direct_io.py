"""Local writes with O_DIRECT: the same bytes as the page-cache path, its fallback, its errors."""

from __future__ import annotations

import errno
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import StorageError
from ckpthooks._io import direct
from ckpthooks._io.direct import ALIGN, DirectFile, direct_io_default, open_direct
from ckpthooks._io.torch_io import TorchCheckpointIO
from ckpthooks._io.writing import write_durably

pytestmark = pytest.mark.skipif(not getattr(os, "O_DIRECT", 0), reason="the platform has no O_DIRECT")

SMALL = 16 * ALIGN  # buffers of 64 KiB: every boundary case in a few hundred KiB


def _tmpfs() -> Path | None:
    """A writable tmpfs folder (which refuses O_DIRECT), if the machine has one."""
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _, mount, fstype, *_ = line.split()
                if fstype == "tmpfs" and os.access(mount, os.W_OK) and mount in ("/dev/shm", "/tmp", "/run/user"):
                    return Path(mount)
    except OSError:
        return None
    return None


def _direct_file(path: Path, buffer_size: int = SMALL) -> DirectFile:
    handle = open_direct(str(path), buffer_size)
    if handle is None:
        pytest.skip(f"{path.parent} refuses O_DIRECT")
    return handle


@pytest.mark.parametrize(
    "size",
    [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, SMALL - 1, SMALL, SMALL + 1, 2 * SMALL, 5 * SMALL + 3 * ALIGN + 17],
)
def test_the_file_holds_exactly_the_bytes_written(tmp_path: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    chunks = random.Random(size + 1)
    with _direct_file(tmp_path / "f") as handle:
        offset = 0
        while offset < size:  # writes of every size, across buffer boundaries
            step = min(size - offset, chunks.choice([1, 7, ALIGN, SMALL - 3, 3 * SMALL]))
            assert handle.write(memoryview(data)[offset : offset + step]) == step
            offset += step
    assert (tmp_path / "f").read_bytes() == data


def test_flush_then_more_writes_keep_the_bytes(tmp_path: Path) -> None:
    """A flush mid-file writes the tail through the page cache; later writes continue there."""
    data = random.Random(0).randbytes(3 * SMALL + 999)
    with _direct_file(tmp_path / "f") as handle:
        handle.write(data[:SMALL + 5])
        handle.flush()
        assert os.path.getsize(tmp_path / "f") == SMALL + 5
        handle.write(data[SMALL + 5 :])
    assert (tmp_path / "f").read_bytes() == data


def test_a_checkpoint_written_directly_is_byte_identical_to_the_buffered_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = {"w": torch.randn(3_000_000), "small": torch.arange(7), "meta": {"epoch": 3}}
    results = {}
    for flag in (True, False):
        io = TorchCheckpointIO(direct_io=flag)
        results[flag] = io.save_checkpoint(state, str(tmp_path / f"{flag}.ckpt"))
    assert (tmp_path / "True.ckpt").read_bytes() == (tmp_path / "False.ckpt").read_bytes()
    assert results[True].checksum == results[False].checksum and results[True].size == results[False].size
    loaded = torch.load(tmp_path / "True.ckpt", weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["meta"] == {"epoch": 3}


def test_a_tmpfs_file_is_written_right_whether_or_not_it_takes_o_direct() -> None:
    """tmpfs refuses O_DIRECT before Linux 6.6 and takes it since: the file is right either way."""
    folder = _tmpfs()
    if folder is None:
        pytest.skip("no writable tmpfs mount on this machine")
    target = folder / f"ckpthooks-direct-{os.getpid()}"
    try:
        data = random.Random(1).randbytes(3 * direct.BUFFER_SIZE // 2 + 11)
        result = write_durably(str(target), lambda writer: writer.write(data), direct_io=True)
        assert target.read_bytes() == data and result.size == len(data)
    finally:
        target.unlink(missing_ok=True)


@pytest.fixture
def ramfs(tmp_path: Path) -> Any:
    """A ramfs mount (it refuses O_DIRECT at open), where this process may mount one."""
    mount = tmp_path / "ramfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a ramfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_file_system_that_refuses_o_direct_gets_a_buffered_write(ramfs: Path) -> None:
    target = ramfs / "ckpt"
    assert open_direct(str(target)) is None
    assert list(ramfs.iterdir()) == []  # the file the refused open created is gone
    data = random.Random(1).randbytes(3 * direct.BUFFER_SIZE // 2 + 11)
    result = write_durably(str(target), lambda writer: writer.write(data), direct_io=True)
    assert target.read_bytes() == data and result.size == len(data)
    assert [p.name for p in ramfs.iterdir()] == ["ckpt"]


def test_an_open_refused_with_einval_gets_a_buffered_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same refusal injected at open, for machines where no such file system can be mounted."""
    real = os.open

    def refusing(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, mode)

    monkeypatch.setattr(direct.os, "open", refusing)
    target = tmp_path / "ckpt"
    data = random.Random(4).randbytes(SMALL * 3)
    write_durably(str(target), lambda writer: writer.write(data), direct_io=True)
    assert target.read_bytes() == data


def test_a_write_refused_after_open_falls_back_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some file systems accept O_DIRECT at open and refuse the writes (EINVAL): the file is then
    written through the page cache (a fault injected: this disk accepts both)."""
    real = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: Any, offset: int) -> int:
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    data = random.Random(2).randbytes(4 * SMALL + 100)
    with _direct_file(tmp_path / "f") as handle:
        handle.write(data)
    assert refused == [0]  # refused once, then buffered for good
    assert (tmp_path / "f").read_bytes() == data


def test_a_write_error_fails_the_save_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk during a direct write (injected) raises StorageError; the target is untouched and
    no temporary file stays."""
    target = tmp_path / "ckpt"
    target.write_bytes(b"previous")
    real = os.pwrite
    calls = 0

    def pwrite(fd: int, data: Any, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    data = random.Random(3).randbytes(5 * direct.BUFFER_SIZE // 2)
    with pytest.raises(StorageError, match="disk is full"):
        write_durably(str(target), lambda writer: writer.write(data), direct_io=True)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_direct_io_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = direct.open_direct

    def spy(path: str, buffer_size: int = direct.BUFFER_SIZE) -> DirectFile | None:
        opened.append(path)
        return real(path, buffer_size)

    monkeypatch.setattr("ckpthooks._io.durable.open_direct", spy)
    write_durably(str(tmp_path / "a"), lambda writer: writer.write(b"x"), direct_io=False)
    assert opened == []
    monkeypatch.setenv("CKPTHOOKS_DIRECT_IO", "0")
    assert direct_io_default() is False
    TorchCheckpointIO().save_checkpoint({"a": 1}, str(tmp_path / "b"))
    assert opened == []
    monkeypatch.setenv("CKPTHOOKS_DIRECT_IO", "1")
    assert direct_io_default() is True
    TorchCheckpointIO().save_checkpoint({"a": 1}, str(tmp_path / "c"))
    assert len(opened) == 1


def test_buffers_are_reused_between_files(tmp_path: Path) -> None:
    size = 3 * ALIGN  # a size no other test uses: the pool holds no other pair of it
    first = _direct_file(tmp_path / "a", size)
    pair = first._pair
    first.write(b"x" * 10)
    first.close()
    second = _direct_file(tmp_path / "b", size)
    assert second._pair is pair
    second.close()


@pytest.mark.parametrize("algorithm", ["xxh3_64", "crc32"])
def test_a_hashing_writer_over_a_direct_file_digests_every_byte_in_order(tmp_path: Path, algorithm: str) -> None:
    """The direct file hashes a buffer at a time: the digest (also asked for before the file is
    closed, as a copy's verification does) and the size are those of the bytes written so far."""
    from ckpthooks._io.hashing import HashingWriter, hash_stream

    data = random.Random(7).randbytes(4 * SMALL + 3 * ALIGN + 5)
    chunks = random.Random(8)
    handle = _direct_file(tmp_path / "f")
    with handle:
        writer = HashingWriter(handle, algorithm)  # type: ignore[arg-type]
        offset = 0
        while offset < len(data):
            step = min(len(data) - offset, chunks.choice([1, 30, ALIGN + 1, SMALL - 3, 2 * SMALL]))
            writer.write(memoryview(data)[offset : offset + step])
            offset += step
            if chunks.random() < 0.3:
                assert writer.hexdigest() == hash_stream([data[:offset]], algorithm)[1]
                assert writer.size == offset
            if chunks.random() < 0.1:
                writer.flush()
    assert writer.size == len(data)
    assert writer.hexdigest() == hash_stream([data], algorithm)[1]
    assert (tmp_path / "f").read_bytes() == data


def test_a_write_error_under_torch_save_is_reported_as_what_the_disk_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save turns the writer's OSError into a RuntimeError; the checksum writer, which leaves
    the hashing to the direct file, still remembers it, so the save raises the StorageError naming
    a full disk."""
    real = os.pwrite
    calls = 0

    def pwrite(fd: int, data: Any, offset: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    state = {"w": torch.randn(3 * direct.BUFFER_SIZE // 4)}  # three buffers' worth of float32
    with pytest.raises(StorageError, match="disk is full"):
        write_durably(str(tmp_path / "ckpt"), lambda writer: torch.save(state, writer), direct_io=True)
    assert list(tmp_path.iterdir()) == []
