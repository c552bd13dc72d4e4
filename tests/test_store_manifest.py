"""The commit protocol: manifests written last, verified on load, removed first."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

import ckpthooks
from ckpthooks import Checkpointer, CheckpointNotFoundError, CorruptCheckpointError
from ckpthooks._catalog import iter_committed, read_manifest, verify_checkpoint
from ckpthooks._io.durable import TEMP_MARKER
from ckpthooks._io.hashing import hash_stream, read_chunks
from ckpthooks._io.torch_io import TorchCheckpointIO
from ckpthooks._last_search import SearchFolder, committed_in
from ckpthooks._manifest import MANIFEST_SUFFIX, Manifest, manifest_path, previous_path
from ckpthooks._store import CheckpointStore


def _checkpoint(value: float = 1.0) -> dict[str, Any]:
    return {
        "epoch": 1,
        "global_step": 10,
        "state_dict": {"w": torch.full((32, 32), value)},
    }


def _save(store: CheckpointStore, path: str, step: int = 10, value: float = 1.0, **kwargs: Any) -> Manifest:
    return store.save(_checkpoint(value), path, epoch=step // 10, global_step=step, **kwargs)


def _flip_byte(path: str, offset: int | None = None) -> None:
    size = os.path.getsize(path)
    offset = size // 2 if offset is None else offset
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert os.path.getsize(path) == size


@pytest.fixture
def store() -> CheckpointStore:
    return CheckpointStore()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every os.replace (target) and os.remove (path), in order, for local storage."""
    recorded: list[tuple[str, str]] = []
    real_replace, real_remove = os.replace, os.remove

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        recorded.append(("replace", os.fspath(dst)))
        real_replace(src, dst, *args, **kwargs)

    def remove(path: Any, *args: Any, **kwargs: Any) -> None:
        if TEMP_MARKER not in os.fspath(path):
            recorded.append(("remove", os.fspath(path)))
        real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "remove", remove)
    return recorded


# ---------------------------------------------------------------------- save and commit


def test_save_writes_data_then_manifest(
    tmp_path: Any, store: CheckpointStore, events: list[tuple[str, str]]
) -> None:
    path = str(tmp_path / "model.ckpt")
    _save(store, path)
    assert events == [("replace", path), ("replace", path + MANIFEST_SUFFIX)]


def test_manifest_is_written_only_once_data_is_complete(
    tmp_path: Any, store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ckpthooks._commit as store_module

    path = str(tmp_path / "model.ckpt")
    seen: list[int] = []
    real_write = store_module.write_manifest

    def spy(checkpoint_path: str, manifest: Manifest, storage_options: Any = None) -> str:
        seen.append(os.path.getsize(checkpoint_path))
        assert not os.path.exists(manifest_path(checkpoint_path))
        return real_write(checkpoint_path, manifest, storage_options)

    monkeypatch.setattr(store_module, "write_manifest", spy)
    manifest = _save(store, path)
    assert seen == [manifest.size]


def test_manifest_contents(tmp_path: Any, store: CheckpointStore) -> None:
    path = str(tmp_path / "sub" / "model.ckpt")
    before = time.time()
    manifest = _save(store, path, step=42, metrics={"val_loss": 0.25, "acc": 1})
    after = time.time()

    data = json.loads(Path(path + MANIFEST_SUFFIX).read_text())
    assert data["format"] == "ckpthooks.manifest"
    assert data["file"] == "model.ckpt"  # relative: no folder in it
    assert "/" not in data["file"] and str(tmp_path) not in json.dumps(data)
    assert data["size"] == os.path.getsize(path)
    with open(path, "rb") as handle:
        size, digest = hash_stream(read_chunks(handle), data["algorithm"])
    assert data["checksum"] == digest and size == data["size"]
    assert data["algorithm"] in ("crc32", "xxh3_64")
    assert data["epoch"] == 4
    assert data["global_step"] == 42
    assert data["metrics"] == {"val_loss": 0.25, "acc": 1.0}
    assert isinstance(data["metrics"]["acc"], float)
    assert before <= data["created"] <= after
    assert data["library_version"] == ckpthooks.__version__
    assert set(data["plugins"]) >= {"builtin-state", "builtin-policies", "builtin-storage"}
    assert data["weights_only"] is False

    assert read_manifest(path) == manifest
    assert Manifest.from_json(json.dumps(data)) == manifest


def test_checkpointer_save_records_loop_position_and_metrics(tmp_path: Any) -> None:
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False).track(model=torch.nn.Linear(2, 2))
    ckpt.progress.epoch, ckpt.progress.global_step = 3, 17
    ckpt.log("loss", torch.tensor(0.5))
    manifest = ckpt.save_checkpoint(tmp_path / "a.ckpt", writer="me")
    assert manifest is not None
    on_disk = read_manifest(str(tmp_path / "a.ckpt"))
    assert on_disk is not None
    assert (on_disk.epoch, on_disk.global_step, on_disk.metrics) == (3, 17, {"loss": 0.5})
    assert on_disk.writer == "me"
    assert [c.path for c in ckpt.committed_checkpoints()] == [str(tmp_path / "a.ckpt")]


def test_files_without_manifest_are_not_committed(tmp_path: Any, store: CheckpointStore) -> None:
    committed = str(tmp_path / "committed.ckpt")
    _save(store, committed, step=10)
    torch.save(_checkpoint(), tmp_path / "plain.ckpt")  # never committed
    uncommitted = str(tmp_path / "uncommitted.ckpt")
    _save(store, uncommitted, step=99)
    os.remove(uncommitted + MANIFEST_SUFFIX)  # as if the save crashed before the commit
    (tmp_path / "garbage.ckpt").write_bytes(b"x")
    (tmp_path / ("garbage.ckpt" + MANIFEST_SUFFIX)).write_text("{not json")

    assert [c.path for c in iter_committed(str(tmp_path))] == [committed]
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False)
    assert [c.path for c in ckpt.committed_checkpoints()] == [committed]
    assert ckpt.find_checkpoint("last") == committed
    with pytest.raises(CheckpointNotFoundError):
        verify_checkpoint(uncommitted)


def test_committed_checkpoints_newest_first_and_recursive(tmp_path: Any, store: CheckpointStore) -> None:
    a = str(tmp_path / "a.ckpt")
    b = str(tmp_path / "deep" / "er" / "b.ckpt")
    c = str(tmp_path / "c.ckpt")
    _save(store, a, step=5)
    _save(store, b, step=30)
    _save(store, c, step=20)
    assert [x.path for x in committed_in([SearchFolder(str(tmp_path), True)])] == [b, c, a]
    assert sorted(x.path for x in iter_committed(str(tmp_path), recursive=False)) == [a, c]
    assert list(iter_committed(str(tmp_path / "missing"))) == []


def test_manifest_naming_another_file_is_ignored(tmp_path: Any, store: CheckpointStore) -> None:
    a = str(tmp_path / "a.ckpt")
    b = str(tmp_path / "b.ckpt")
    _save(store, a)
    shutil.copy(a, b)
    shutil.copy(a + MANIFEST_SUFFIX, b + MANIFEST_SUFFIX)  # says "file": "a.ckpt"
    assert read_manifest(b) is None
    assert [c.path for c in iter_committed(str(tmp_path))] == [a]
    with pytest.raises(CheckpointNotFoundError):
        verify_checkpoint(b)
    with pytest.raises(CheckpointNotFoundError):
        store.load(b, require_manifest=True)


# ---------------------------------------------------------------------- verify on load


def test_flipped_byte_fails_the_checksum(tmp_path: Any, store: CheckpointStore) -> None:
    path = str(tmp_path / "model.ckpt")
    _save(store, path)
    _flip_byte(path)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        store.load(path)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        verify_checkpoint(path)
    # the size-only check does not read the bytes, so it passes
    manifest = verify_checkpoint(path, mode="size")
    assert manifest.size == os.path.getsize(path)
    assert verify_checkpoint(path, mode="off") == manifest
    CheckpointStore(verify="size").verify_committed(next(iter_committed(str(tmp_path))))


def test_flipped_byte_fails_restore_and_last_falls_back(tmp_path: Any, store: CheckpointStore) -> None:
    older = str(tmp_path / "older.ckpt")
    newer = str(tmp_path / "newer.ckpt")
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, save_rng_state=False)
    model = torch.nn.Linear(2, 2)
    ckpt.track(model=model)
    ckpt.progress.global_step = 1
    ckpt.save_checkpoint(older)
    ckpt.progress.global_step = 2
    ckpt.save_checkpoint(newer)
    assert ckpt.find_checkpoint("last") == newer

    _flip_byte(newer)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        ckpt.restore(newer)
    assert ckpt.find_checkpoint("last") == older
    report = ckpt.restore("last")
    assert report is not None and report.path == older and report.global_step == 1


def test_truncated_file_fails_the_size_check(tmp_path: Any, store: CheckpointStore) -> None:
    path = str(tmp_path / "model.ckpt")
    manifest = _save(store, path)
    with open(path, "r+b") as handle:
        handle.truncate(manifest.size - 100)
    for mode in ("full", "size"):
        with pytest.raises(CorruptCheckpointError, match=f"{manifest.size - 100} bytes.*{manifest.size}"):
            verify_checkpoint(path, mode=mode)  # type: ignore[arg-type]
    with pytest.raises(CorruptCheckpointError, match="bytes"):
        store.load(path)


def test_missing_data_with_manifest_is_corrupt(tmp_path: Any, store: CheckpointStore) -> None:
    path = str(tmp_path / "model.ckpt")
    _save(store, path)
    os.remove(path)
    with pytest.raises(CorruptCheckpointError, match="missing"):
        store.load(path)


def test_load_verified_round_trip(tmp_path: Any, store: CheckpointStore) -> None:
    path = str(tmp_path / "model.ckpt")
    _save(store, path, value=7.0)
    loaded = store.load(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.full((32, 32), 7.0))
    with pytest.raises(CheckpointNotFoundError):
        store.load(str(tmp_path / "nope.ckpt"))


def test_unmanifested_file_loads_unverified_unless_required(tmp_path: Any, store: CheckpointStore) -> None:
    path = str(tmp_path / "plain.ckpt")
    torch.save(_checkpoint(2.0), path)
    assert torch.equal(store.load(path)["state_dict"]["w"], torch.full((32, 32), 2.0))
    with pytest.raises(CheckpointNotFoundError, match="not a committed"):
        store.load(path, require_manifest=True)


# ---------------------------------------------------------------------- remove and re-save


def test_remove_deletes_manifest_before_data(
    tmp_path: Any, store: CheckpointStore, events: list[tuple[str, str]]
) -> None:
    path = str(tmp_path / "model.ckpt")
    _save(store, path)
    events.clear()
    store.remove(path)
    assert events == [("remove", path + MANIFEST_SUFFIX), ("remove", path)]
    assert os.listdir(tmp_path) == []
    store.remove(path)  # removing again is fine


def test_resave_uncommits_before_writing_new_data(
    tmp_path: Any, store: CheckpointStore, events: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "model.ckpt")
    _save(store, path, step=10, value=1.0)
    events.clear()

    manifest_during_write: list[bool] = []
    real_save = TorchCheckpointIO.save_checkpoint

    def spy(self: TorchCheckpointIO, *args: Any, **kwargs: Any) -> Any:
        manifest_during_write.append(os.path.exists(path + MANIFEST_SUFFIX))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", spy)
    manifest = _save(store, path, step=20, value=2.0)

    assert manifest_during_write == [False]
    kept = previous_path(path)
    order = {event: index for index, event in enumerate(events)}
    # the old version stays committed under a hidden name while the original is uncommitted,
    # rewritten and committed again; then the kept copy goes
    assert order[("replace", kept + MANIFEST_SUFFIX)] < order[("remove", path + MANIFEST_SUFFIX)]
    assert order[("remove", path + MANIFEST_SUFFIX)] < order[("replace", path)]
    assert order[("replace", path)] < order[("replace", path + MANIFEST_SUFFIX)]
    assert order[("replace", path + MANIFEST_SUFFIX)] < max(i for e, i in order.items() if e == ("remove", kept))
    assert not os.path.exists(kept) and not os.path.exists(kept + MANIFEST_SUFFIX)
    on_disk = read_manifest(path)
    assert on_disk is not None and on_disk.global_step == 20 and on_disk == manifest
    assert torch.equal(store.load(path)["state_dict"]["w"], torch.full((32, 32), 2.0))


def test_failed_resave_keeps_the_old_version_committed(
    tmp_path: Any, store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "model.ckpt")
    _save(store, path, step=10)
    real_replace = os.replace

    def boom(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(dst) == path:
            raise OSError(28, "No space left on device")
        real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(ckpthooks.StorageError):
        _save(store, path, step=20, value=2.0)
    monkeypatch.undo()
    # the bytes at path were never replaced, so the old version is committed there again
    committed = list(iter_committed(str(tmp_path)))
    assert [(c.path, c.manifest.global_step) for c in committed] == [(path, 10)]
    verify_checkpoint(committed[0].path, committed[0].manifest)
    assert [n for n in os.listdir(tmp_path) if TEMP_MARKER in n or n.startswith(".")] == []


# ---------------------------------------------------------------------- memory://


@pytest.fixture
def memory_root() -> Iterator[str]:
    name = f"ckpthooks-store-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    for key in [k for k in MemoryFileSystem.store if k.startswith(f"/{name}")]:
        del MemoryFileSystem.store[key]
    MemoryFileSystem.pseudo_dirs[:] = [d for d in MemoryFileSystem.pseudo_dirs if not d.startswith(f"/{name}")]


def test_memory_commit_list_verify_remove(memory_root: str, store: CheckpointStore) -> None:
    a = f"{memory_root}/a.ckpt"
    b = f"{memory_root}/nested/b.ckpt"
    _save(store, a, step=10, value=1.0)
    _save(store, b, step=20, value=2.0)
    fs = fsspec.filesystem("memory")
    stripped_root = "/" + memory_root.removeprefix("memory://")
    fs.pipe_file(f"{stripped_root}/orphan.ckpt", b"no manifest")

    found = list(iter_committed(memory_root))
    # paths come back spelled like the root, so they compare equal to the saved paths
    assert sorted(c.path for c in found) == [a, b]
    assert [c.path for c in committed_in([SearchFolder(memory_root, True)])] == [b, a]
    assert [c.path for c in iter_committed(memory_root, recursive=False)] == [a]
    for item in found:
        store.verify_committed(item)
        assert item.manifest.file == item.path.rsplit("/", 1)[1]

    assert torch.equal(store.load(b)["state_dict"]["w"], torch.full((32, 32), 2.0))

    raw = bytearray(fs.cat_file(f"{stripped_root}/a.ckpt"))
    raw[len(raw) // 2] ^= 0xFF
    fs.pipe_file(f"{stripped_root}/a.ckpt", bytes(raw))
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        store.load(a)

    store.remove(b)
    assert not fs.exists(f"{stripped_root}/nested/b.ckpt")
    assert not fs.exists(f"{stripped_root}/nested/b.ckpt{MANIFEST_SUFFIX}")
    assert [c.path for c in iter_committed(memory_root)] == [a]


def test_memory_triple_slash_root(memory_root: str, store: CheckpointStore) -> None:
    name = memory_root.removeprefix("memory://")
    path = f"memory:///{name}/x.ckpt"
    _save(store, path)
    assert [c.path for c in iter_committed(f"memory:///{name}")] == [path]
    assert list(iter_committed(f"memory://{name}-other")) == []
