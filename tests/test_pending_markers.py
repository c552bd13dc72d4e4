"""Pending markers of remote saves (here on ``memory://``, which has no rename either)."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
import pytest
import torch

from ckpthooks import Checkpointer, StorageError, TorchCheckpointIO
from ckpthooks._catalog import read_manifest
from ckpthooks._commit import (
    PENDING_FORMAT,
    PENDING_STALE_AFTER,
    PENDING_SUFFIX,
    STALE_AFTER,
    clean_leftovers,
    pending_checkpoint_name,
    pending_is_stale,
    pending_marker_path,
)
from ckpthooks._io.durable import PROCESS_TOKEN
from ckpthooks._manifest import MANIFEST_SUFFIX
from tests.test_leftovers_and_save_errors import dead_pid

HOST = socket.gethostname()


@pytest.fixture
def root() -> Iterator[str]:
    folder = f"memory://pending-{uuid.uuid4().hex[:8]}"
    yield folder
    fs = fsspec.filesystem("memory")
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def names(folder: str) -> set[str]:
    fs = fsspec.filesystem("memory")
    return {os.path.basename(p) for p in fs.ls(folder, detail=False)} if fs.exists(folder) else set()


def marker(**fields: Any) -> dict[str, Any]:
    return {"format": PENDING_FORMAT, "file": "x.ckpt", "host": HOST, "pid": os.getpid(), "token": PROCESS_TOKEN,
            "created": time.time(), **fields}


def test_marker_names() -> None:
    assert pending_marker_path("s3://b/run/epoch=1.ckpt") == "s3://b/run/.epoch=1.ckpt" + PENDING_SUFFIX
    assert pending_checkpoint_name(".epoch=1.ckpt" + PENDING_SUFFIX) == "epoch=1.ckpt"
    assert pending_checkpoint_name("epoch=1.ckpt") is None
    assert pending_checkpoint_name("." + PENDING_SUFFIX) is None


def test_staleness_rules() -> None:
    now = time.time()
    assert not pending_is_stale(None)
    assert not pending_is_stale(marker(created=now - 10 * PENDING_STALE_AFTER), now)  # this process: never
    assert pending_is_stale(marker(pid=dead_pid(), token="other"), now)  # this host, writer gone
    live_other = marker(pid=os.getppid(), token="other")  # this host, pid alive (maybe reused)
    assert not pending_is_stale({**live_other, "created": now - 60}, now)
    assert pending_is_stale({**live_other, "created": now - STALE_AFTER - 60}, now)
    remote = marker(host="elsewhere", pid=1, token="other")  # writer cannot be checked: age only
    assert not pending_is_stale({**remote, "created": now - STALE_AFTER - 60}, now)
    assert pending_is_stale({**remote, "created": now - PENDING_STALE_AFTER - 60}, now)


def test_a_remote_save_writes_the_marker_before_the_data_and_removes_it_after_the_commit(root: str) -> None:
    seen: list[set[str]] = []

    class Watching(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any = None) -> Any:
            seen.append(names(root))
            return super().save_checkpoint(checkpoint, path, storage_options)

    ckpt = Checkpointer(root, enable_checkpointing=False, checkpoint_io=Watching()).track(model=torch.nn.Linear(2, 2))
    ckpt.save_checkpoint(f"{root}/a.ckpt")
    assert seen == [{".a.ckpt" + PENDING_SUFFIX}]
    assert names(root) == {"a.ckpt", "a.ckpt" + MANIFEST_SUFFIX}


def test_a_failed_remote_write_leaves_its_marker_for_the_next_start(root: str) -> None:
    class Failing(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any = None) -> Any:
            fsspec.filesystem("memory").pipe_file(path, b"half")
            raise StorageError("injected")

    ckpt = Checkpointer(root, enable_checkpointing=False, checkpoint_io=Failing()).track(model=torch.nn.Linear(2, 2))
    with pytest.raises(StorageError, match="injected"):
        ckpt.save_checkpoint(f"{root}/a.ckpt")
    assert names(root) == {"a.ckpt", ".a.ckpt" + PENDING_SUFFIX}
    assert read_manifest(f"{root}/a.ckpt") is None


def test_clean_leftovers_on_remote_folders(root: str) -> None:
    fs = fsspec.filesystem("memory")
    ckpt = Checkpointer(root, enable_checkpointing=False).track(model=torch.nn.Linear(2, 2))
    ckpt.save_checkpoint(f"{root}/committed.ckpt")
    old = time.time() - PENDING_STALE_AFTER - 60

    def leave(name: str, data: bytes | None, **fields: Any) -> None:
        if data is not None:
            fs.pipe_file(f"{root}/{name}", data)
        fs.pipe_file(pending_marker_path(f"{root}/{name}"), json.dumps(marker(file=name, **fields)).encode())

    leave("crashed.ckpt", b"half", host="elsewhere", token="other", created=old)
    leave("committed.ckpt", None, pid=dead_pid(), token="other")  # crashed after the commit
    leave("never-written.ckpt", None, pid=dead_pid(), token="other")  # crashed before the data
    leave("in-flight.ckpt", b"half", host="elsewhere", token="other")  # young: may be uploading now
    leave("mine.ckpt", b"half")  # this process
    fs.pipe_file(f"{root}/.garbled.ckpt{PENDING_SUFFIX}", b"not json")  # judged by its (young) age
    fs.pipe_file(f"{root}/garbled.ckpt", b"half")
    fs.pipe_file(f"{root}/foreign.ckpt", b"not ours, no marker")

    removed = clean_leftovers([root])

    assert sorted(removed) == sorted(
        [
            f"{root}/crashed.ckpt",
            f"{root}/.crashed.ckpt{PENDING_SUFFIX}",
            f"{root}/.committed.ckpt{PENDING_SUFFIX}",
            f"{root}/.never-written.ckpt{PENDING_SUFFIX}",
        ]
    )
    assert names(root) == {
        "committed.ckpt", "committed.ckpt" + MANIFEST_SUFFIX,
        "in-flight.ckpt", ".in-flight.ckpt" + PENDING_SUFFIX,
        "mine.ckpt", ".mine.ckpt" + PENDING_SUFFIX,
        "garbled.ckpt", ".garbled.ckpt" + PENDING_SUFFIX,
        "foreign.ckpt",
    }
    assert read_manifest(f"{root}/committed.ckpt") is not None


def test_an_unlistable_remote_folder_does_not_stop_the_start(root: str) -> None:
    assert clean_leftovers([f"{root}/does-not-exist"]) == []
