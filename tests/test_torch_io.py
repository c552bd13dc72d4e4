"""The default storage backend: crash-safe local writes, clear load errors, fsspec URLs."""

from __future__ import annotations

import builtins
import errno
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

import ckpthooks
from ckpthooks import (
    Checkpointer,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    StorageError,
    TorchCheckpointIO,
)
from ckpthooks._io import durable
from ckpthooks._io.durable import TEMP_MARKER, is_temp_name
from ckpthooks._io.hashing import HashingWriter, hash_stream, read_chunks


def _checkpoint(value: float = 1.0) -> dict[str, Any]:
    return {
        "epoch": 3,
        "global_step": 7,
        "state_dict": {"w": torch.full((16, 16), value), "b": torch.arange(5)},
        "meta": {"name": "tiny", "lr": 0.1},
    }


def _file_hash(path: str, algorithm: str) -> tuple[int, str]:
    with open(path, "rb") as handle:
        return hash_stream(read_chunks(handle), algorithm)


def _temp_files(folder: os.PathLike[str] | str) -> list[str]:
    return [name for name in os.listdir(folder) if TEMP_MARKER in name]


class _Boom:
    """Pickling it fails, so torch.save raises part-way through."""

    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle _Boom")


class _Pickles:
    """An arbitrary (importable) class: loading it needs weights_only=False."""


# ---------------------------------------------------------------------- local save


def test_local_save_streams_to_temp_sibling_fsyncs_and_renames(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = str(tmp_path / "run" / "model.ckpt")
    events: list[tuple[str, Any]] = []
    real_fsync, real_replace, real_save = os.fsync, os.replace, torch.save

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def spy_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        events.append(("replace", (os.fspath(src), os.fspath(dst))))
        real_replace(src, dst, *args, **kwargs)

    save_targets: list[type] = []

    def spy_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        save_targets.append(type(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(torch, "save", spy_save)

    result = TorchCheckpointIO().save_checkpoint(_checkpoint(), target)

    # torch.save streamed into the file wrapper, never into a whole-checkpoint bytes buffer
    assert save_targets == [HashingWriter]
    assert not issubclass(save_targets[0], io.BytesIO)

    replaces = [value for kind, value in events if kind == "replace"]
    assert len(replaces) == 1
    tmp, dst = replaces[0]
    assert dst == target
    assert os.path.dirname(tmp) == os.path.dirname(target)
    assert is_temp_name(os.path.basename(tmp))
    assert not os.path.exists(tmp)

    fsyncs = [value for kind, value in events if kind == "fsync"]
    folder = os.path.realpath(os.path.dirname(target))
    # the file is fsynced (under its temporary name) before the rename, the folder after it
    replace_index = events.index(("replace", (tmp, dst)))
    file_syncs = [i for i, (kind, value) in enumerate(events) if kind == "fsync" and value == os.path.realpath(tmp)]
    dir_syncs = [i for i, (kind, value) in enumerate(events) if kind == "fsync" and value == folder]
    assert file_syncs and max(file_syncs) < replace_index, fsyncs
    assert dir_syncs and max(dir_syncs) > replace_index, fsyncs

    assert result.size == os.path.getsize(target)
    assert result.algorithm is not None
    size, digest = _file_hash(target, result.algorithm)
    assert size == result.size
    assert result.checksum == digest
    assert _temp_files(os.path.dirname(target)) == []

    loaded = TorchCheckpointIO().load_checkpoint(target)
    assert torch.equal(loaded["state_dict"]["w"], torch.full((16, 16), 1.0))
    assert loaded["meta"] == {"name": "tiny", "lr": 0.1}


def test_explicit_checksum_algorithm(tmp_path: Any) -> None:
    target = str(tmp_path / "a.ckpt")
    result = TorchCheckpointIO(checksum_algorithm="crc32").save_checkpoint(_checkpoint(), target)
    assert result.algorithm == "crc32"
    assert result.checksum == _file_hash(target, "crc32")[1]


def _zip_crcs(path: str) -> list[int]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return [info.CRC for info in archive.infolist() if info.file_size]


@pytest.mark.skipif(not hasattr(torch.serialization, "set_crc32_options"), reason="needs torch >= 2.6")
@pytest.mark.parametrize("where", ["local", "memory"])
def test_torch_zip_crcs_are_left_out_and_the_file_still_loads(tmp_path: Any, where: str) -> None:
    """ckpthooks' checksum covers every byte, so torch's per-record CRC-32 (as costly as the
    checksum) is not computed; torch.load, with and without mmap, reads the file all the same."""
    target = str(tmp_path / "a.ckpt") if where == "local" else f"memory://crc-{uuid.uuid4().hex}/a.ckpt"
    TorchCheckpointIO().save_checkpoint(_checkpoint(2.0), target)
    local = str(tmp_path / "copy.ckpt")
    with fsspec.open(target, "rb") as source, open(local, "wb") as copy:
        copy.write(source.read())
    assert set(_zip_crcs(local)) == {0}
    for mmap in (False, True):
        loaded = torch.load(local, weights_only=True, mmap=mmap)
        assert torch.equal(loaded["state_dict"]["w"], torch.full((16, 16), 2.0))
    assert torch.serialization.get_crc32_options() is True  # the process-wide switch is restored


def test_zip_crcs_are_written_on_request(tmp_path: Any) -> None:
    import zipfile

    target = str(tmp_path / "a.ckpt")
    TorchCheckpointIO(zip_crc32=True).save_checkpoint(_checkpoint(), target)
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None  # every record's CRC matches
    assert 0 not in _zip_crcs(target)


@pytest.mark.skipif(not hasattr(torch.serialization, "set_crc32_options"), reason="needs torch >= 2.6")
def test_the_zip_crc_switch_is_restored_after_a_failed_save_and_overlapping_saves(tmp_path: Any) -> None:
    import threading

    torch.serialization.set_crc32_options(True)
    with pytest.raises(Exception, match="_Boom"):
        TorchCheckpointIO().save_checkpoint({"x": torch.ones(3), "bad": _Boom()}, str(tmp_path / "bad.ckpt"))
    assert torch.serialization.get_crc32_options() is True

    inside = threading.Barrier(2)
    seen: list[bool] = []

    class _Meet:
        """Holds both saves inside torch.save at the same time."""

        def __reduce__(self) -> Any:
            seen.append(torch.serialization.get_crc32_options())
            inside.wait(timeout=30)
            return (int, (1,))

    threads = [
        threading.Thread(
            target=TorchCheckpointIO().save_checkpoint, args=({"m": _Meet()}, str(tmp_path / f"{n}.ckpt"))
        )
        for n in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert seen == [False, False]
    assert torch.serialization.get_crc32_options() is True


def test_failing_pickle_leaves_previous_file_and_no_temp(tmp_path: Any) -> None:
    target = str(tmp_path / "model.ckpt")
    backend = TorchCheckpointIO()
    backend.save_checkpoint(_checkpoint(1.0), target)
    before = Path(target).read_bytes()

    broken = _checkpoint(2.0)
    broken["bad"] = _Boom()
    with pytest.raises(RuntimeError, match="cannot pickle _Boom"):
        backend.save_checkpoint(broken, target)

    assert Path(target).read_bytes() == before
    assert _temp_files(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]


def test_failing_pickle_without_previous_file_leaves_nothing(tmp_path: Any) -> None:
    target = str(tmp_path / "model.ckpt")
    with pytest.raises(RuntimeError):
        TorchCheckpointIO().save_checkpoint({"bad": _Boom()}, target)
    assert os.listdir(tmp_path) == []


class _DiskFillsUp:
    """A file that accepts a few writes and then fails like a full disk."""

    def __init__(self, handle: Any, allowed_writes: int) -> None:
        self._handle = handle
        self.allowed_writes = allowed_writes
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        if self.writes > self.allowed_writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self._handle.write(data))

    def __enter__(self) -> _DiskFillsUp:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _fill_disk_on_temp_files(monkeypatch: pytest.MonkeyPatch) -> list[_DiskFillsUp]:
    real_open = builtins.open
    opened: list[_DiskFillsUp] = []

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and isinstance(file, str) and TEMP_MARKER in file:
            opened.append(_DiskFillsUp(handle, allowed_writes=2))
            return opened[-1]
        return handle

    def open_direct(path: str, *args: Any) -> Any:  # the O_DIRECT path fills up alike
        handle = real_open_direct(path, *args)
        if handle is not None and TEMP_MARKER in path:
            opened.append(_DiskFillsUp(handle, allowed_writes=2))
            return opened[-1]
        return handle

    real_open_direct = durable.open_direct
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(durable, "open_direct", open_direct)
    return opened


def test_disk_full_midway_is_a_storage_error_and_keeps_previous_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save turns the writer's OSError into a RuntimeError; it must still be a StorageError."""
    target = str(tmp_path / "model.ckpt")
    backend = TorchCheckpointIO()
    backend.save_checkpoint(_checkpoint(1.0), target)
    before = Path(target).read_bytes()

    opened = _fill_disk_on_temp_files(monkeypatch)
    with pytest.raises(StorageError, match="disk is full") as info:
        backend.save_checkpoint(_checkpoint(2.0), target)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert len(opened) == 1 and opened[0].writes == 3  # some bytes went out before it failed
    assert Path(target).read_bytes() == before
    assert _temp_files(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_a_storage_error(tmp_path: Any) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="writable"):
            TorchCheckpointIO().save_checkpoint(_checkpoint(), str(folder / "a.ckpt"))
    finally:
        folder.chmod(0o700)
    assert os.listdir(folder) == []


def test_permission_error_on_open_is_a_storage_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = builtins.open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and str(tmp_path) in os.fspath(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    def guarded_open_direct(path: str, *args: Any) -> Any:  # the O_DIRECT open is refused alike
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(durable, "open_direct", guarded_open_direct)
    with pytest.raises(StorageError, match="writable") as info:
        TorchCheckpointIO().save_checkpoint(_checkpoint(), str(tmp_path / "a.ckpt"))
    assert isinstance(info.value, ckpthooks.CheckpointError)
    assert info.value.errno == errno.EACCES
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_permission_error_on_rename_is_a_storage_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = str(tmp_path / "a.ckpt")

    def denied_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(dst))

    monkeypatch.setattr(os, "replace", denied_replace)
    with pytest.raises(StorageError, match="writable"):
        TorchCheckpointIO().save_checkpoint(_checkpoint(), target)
    assert os.listdir(tmp_path) == []


def test_permission_error_surfaces_through_checkpointer(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning swallows it; here Checkpointer.save_checkpoint raises and commits nothing."""

    def denied_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(dst))

    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, save_rng_state=False)
    ckpt.track(model=torch.nn.Linear(2, 2))
    monkeypatch.setattr(os, "replace", denied_replace)
    with pytest.raises(StorageError):
        ckpt.save_checkpoint(tmp_path / "a.ckpt")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    assert ckpt.committed_checkpoints() == []


# ---------------------------------------------------------------------- load and remove


def test_load_missing_path(tmp_path: Any) -> None:
    with pytest.raises(CheckpointNotFoundError):
        TorchCheckpointIO().load_checkpoint(str(tmp_path / "nope.ckpt"))


def test_load_random_bytes_is_corrupt(tmp_path: Any) -> None:
    target = tmp_path / "junk.ckpt"
    target.write_bytes(os.urandom(4096))
    with pytest.raises(CorruptCheckpointError, match=r"junk\.ckpt"):
        TorchCheckpointIO().load_checkpoint(str(target))


def test_load_truncated_file_is_corrupt(tmp_path: Any) -> None:
    target = str(tmp_path / "model.ckpt")
    result = TorchCheckpointIO().save_checkpoint(_checkpoint(), target)
    with open(target, "r+b") as handle:
        handle.truncate(result.size // 2)
    with pytest.raises(CorruptCheckpointError):
        TorchCheckpointIO().load_checkpoint(target)


def test_load_empty_file_is_corrupt(tmp_path: Any) -> None:
    target = tmp_path / "empty.ckpt"
    target.write_bytes(b"")
    with pytest.raises(CorruptCheckpointError):
        TorchCheckpointIO().load_checkpoint(str(target))


def test_load_non_dict_is_corrupt(tmp_path: Any) -> None:
    target = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), target)
    with pytest.raises(CorruptCheckpointError, match="Tensor, not a checkpoint dict"):
        TorchCheckpointIO().load_checkpoint(str(target))


def test_load_legacy_format_file(tmp_path: Any) -> None:
    """Files in torch's pre-1.6 (non-zip) format cannot be memory-mapped, but they are valid."""
    target = tmp_path / "legacy.ckpt"
    torch.save(_checkpoint(3.0), target, _use_new_zipfile_serialization=False)
    loaded = TorchCheckpointIO().load_checkpoint(str(target))
    assert torch.equal(loaded["state_dict"]["w"], torch.full((16, 16), 3.0))
    assert loaded["global_step"] == 7


def test_load_folder_is_corrupt(tmp_path: Any) -> None:
    with pytest.raises(CorruptCheckpointError, match="folder"):
        TorchCheckpointIO().load_checkpoint(str(tmp_path))


def test_remove(tmp_path: Any) -> None:
    target = str(tmp_path / "a.ckpt")
    backend = TorchCheckpointIO()
    backend.save_checkpoint(_checkpoint(), target)
    backend.remove_checkpoint(target)
    assert not os.path.exists(target)
    backend.remove_checkpoint(target)  # a missing file is fine
    backend.remove_checkpoint(str(tmp_path / "never-existed.ckpt"))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- fsspec URLs


def _forget_memory(prefix: str, store: dict[str, Any], pseudo_dirs: list[str]) -> None:
    for key in [k for k in store if k.startswith(prefix)]:
        del store[key]
    pseudo_dirs[:] = [d for d in pseudo_dirs if not d.startswith(prefix)]


@pytest.fixture
def memory_root() -> Iterator[str]:
    name = f"ckpthooks-test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    _forget_memory(f"/{name}", MemoryFileSystem.store, MemoryFileSystem.pseudo_dirs)


def test_memory_url_save_load_remove(memory_root: str) -> None:
    path = f"{memory_root}/sub/model.ckpt"
    backend = TorchCheckpointIO()
    result = backend.save_checkpoint(_checkpoint(5.0), path)

    fs = fsspec.filesystem("memory")
    stripped = f"/{memory_root.removeprefix('memory://')}/sub/model.ckpt"
    assert fs.exists(stripped)
    data = fs.cat_file(stripped)
    assert result.size == len(data)
    assert result.algorithm is not None
    assert result.checksum == hash_stream([data], result.algorithm)[1]

    loaded = backend.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.full((16, 16), 5.0))
    assert loaded["epoch"] == 3

    backend.remove_checkpoint(path)
    assert not fs.exists(stripped)
    backend.remove_checkpoint(path)  # missing is fine
    with pytest.raises(CheckpointNotFoundError):
        backend.load_checkpoint(path)


@pytest.mark.parametrize("junk", [b"x" * 100, bytes(range(256)) * 4, b"PK\x03\x04" + b"\0" * 60])
def test_memory_url_junk_bytes_are_corrupt_not_unsafe(memory_root: str, junk: bytes) -> None:
    path = f"{memory_root}/junk.ckpt"
    fsspec.filesystem("memory").pipe_file(f"/{memory_root.removeprefix('memory://')}/junk.ckpt", junk)
    with pytest.raises(CorruptCheckpointError):
        TorchCheckpointIO().load_checkpoint(path)


@pytest.mark.parametrize("junk", [b"x" * 100, bytes(range(256)) * 4])
def test_local_junk_bytes_are_corrupt_not_unsafe(tmp_path: Any, junk: bytes) -> None:
    target = tmp_path / "junk.ckpt"
    target.write_bytes(junk)
    with pytest.raises(CorruptCheckpointError):
        TorchCheckpointIO().load_checkpoint(str(target))


def test_memory_url_disk_full_is_a_storage_error(
    memory_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsspec.implementations.memory import MemoryFile

    def full_write(self: Any, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MemoryFile, "write", full_write)
    with pytest.raises(StorageError, match="disk is full"):
        TorchCheckpointIO().save_checkpoint(_checkpoint(), f"{memory_root}/full.ckpt")


def test_unsafe_pickle_is_still_unsafe(tmp_path: Any) -> None:
    target = tmp_path / "unsafe.ckpt"
    torch.save({"obj": _Pickles()}, target)
    with pytest.raises(ckpthooks.UnsafeCheckpointError):
        TorchCheckpointIO().load_checkpoint(str(target))
    loaded = TorchCheckpointIO().load_checkpoint(str(target), weights_only=False)
    assert isinstance(loaded["obj"], _Pickles)


class RecordingMemoryFS(MemoryFileSystem):
    """A memory filesystem with its own store that records the options it was built with."""

    protocol = "recordingmem"
    cachable = False  # build a new instance (and record) on every use
    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    seen: list[dict[str, Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).seen.append(dict(kwargs))
        super().__init__(*args, **kwargs)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str):
            path = path.removeprefix(cls.protocol + "://")
        return super()._strip_protocol(path)


fsspec.register_implementation("recordingmem", RecordingMemoryFS, clobber=True)


@pytest.fixture
def recording_fs() -> Iterator[type[RecordingMemoryFS]]:
    RecordingMemoryFS.seen.clear()
    yield RecordingMemoryFS
    RecordingMemoryFS.seen.clear()
    RecordingMemoryFS.store.clear()
    RecordingMemoryFS.pseudo_dirs[:] = [""]


def test_storage_options_reach_fsspec(recording_fs: type[RecordingMemoryFS]) -> None:
    root = f"recordingmem://run-{uuid.uuid4().hex[:8]}"
    ckpt = Checkpointer(root, storage_options={"token": "abc"}, enable_checkpointing=False)
    model = torch.nn.Linear(3, 2)
    ckpt.track(model=model)

    manifest = ckpt.save_checkpoint(f"{root}/model.ckpt")
    assert manifest is not None
    assert recording_fs.seen, "the filesystem was never built"
    assert all(kwargs.get("token") == "abc" for kwargs in recording_fs.seen), recording_fs.seen
    assert any(key.endswith("/model.ckpt") for key in recording_fs.store)
    assert any(key.endswith("/model.ckpt.manifest.json") for key in recording_fs.store)

    recording_fs.seen.clear()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
    report = Checkpointer(
        root, storage_options={"token": "abc"}, enable_checkpointing=False
    ).track(model=model).restore(f"{root}/model.ckpt")
    assert report is not None and "model" in report.restored
    assert torch.equal(model.weight, expected["weight"])
    assert recording_fs.seen, "loading never built the filesystem"
    assert all(kwargs.get("token") == "abc" for kwargs in recording_fs.seen), recording_fs.seen


def test_storage_options_reach_backend_directly(recording_fs: type[RecordingMemoryFS]) -> None:
    path = f"recordingmem://direct-{uuid.uuid4().hex[:8]}/a.ckpt"
    backend = TorchCheckpointIO()
    backend.save_checkpoint(_checkpoint(), path, storage_options={"token": "xyz"})
    assert recording_fs.seen and recording_fs.seen[-1].get("token") == "xyz"
    recording_fs.seen.clear()
    loaded = backend.load_checkpoint(path, storage_options={"token": "xyz"})
    assert loaded["global_step"] == 7
    assert recording_fs.seen and all(k.get("token") == "xyz" for k in recording_fs.seen)
    recording_fs.seen.clear()
    backend.remove_checkpoint(path, storage_options={"token": "xyz"})
    assert recording_fs.seen and all(k.get("token") == "xyz" for k in recording_fs.seen)
    assert not any(key.endswith("/a.ckpt") for key in recording_fs.store)


def test_temp_names() -> None:
    name = os.path.basename(durable.temp_name_for("/some/folder/model.ckpt"))
    assert is_temp_name(name)
    assert name.startswith(".model.ckpt")
    assert os.path.dirname(durable.temp_name_for("/some/folder/model.ckpt")) == "/some/folder"
    assert not is_temp_name("model.ckpt")
    assert not is_temp_name(".hidden.ckpt")


@pytest.mark.parametrize(
    "content, says",
    [
        (b"", "the file is empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG image"),
        (b'{"epoch": 3}', "JSON text"),
        (len(b'{"a":{}}').to_bytes(8, "little") + b'{"a":{}}', "safetensors file"),
    ],
)
def test_foreign_files_are_named_by_type(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "foreign.ckpt"
    path.write_bytes(content)
    with pytest.raises(ckpthooks.CorruptCheckpointError, match=says) as info:
        TorchCheckpointIO().load_checkpoint(str(path))
    assert "weights_only" not in str(info.value)


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path: Any) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="midway"), durable.atomic_write(str(target)) as handle:
        handle.write(b"new, half")
        raise RuntimeError("midway")
    assert target.read_bytes() == b"old"
    assert _temp_files(tmp_path) == []
    with durable.atomic_write(str(target)) as handle:
        handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert _temp_files(tmp_path) == []
