"""Storage faults during saves: committed checkpoints survive, failed ones stay uncommitted, errors are clear.

Every storage operation a save performs is made to fail in turn, on local disk (``os`` functions and
``open`` monkeypatched) and on the ``faulty://`` filesystem of :mod:`ckpthooks.testing.faults`, during
(1) a manual ``save_checkpoint`` and (2) a ``ModelCheckpoint`` save with top-k pruning and
``save_last``. Each case states its exact outcome: whether the save raised, which checkpoints are
committed afterwards (each must verify and restore the weights it was saved with) and what the
policy's bookkeeping says.
"""

from __future__ import annotations

import builtins
import errno
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer, ModelCheckpoint, StorageError
from ckpthooks._catalog import iter_committed, read_manifest, verify_checkpoint
from ckpthooks._io import durable, paths
from ckpthooks._io.durable import TEMP_MARKER
from ckpthooks.testing.faults import (
    Fault,
    FaultyFileSystem,
    disk_full,
    io_error,
    permission_denied,
    timed_out,
)

ErrorFactory = Callable[[str], BaseException]


@pytest.fixture(autouse=True)
def _fast_retries() -> Iterator[None]:
    """Transient errors are retried without waiting (where the retry module exists)."""
    try:
        from ckpthooks._io import retry
    except ImportError:  # pragma: no cover - older tree without retries
        yield
        return
    previous = retry.set_default_retry(retry.RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0))
    try:
        yield
    finally:
        retry.set_default_retry(previous)


# ---------------------------------------------------------------------- which paths a fault hits


def target(name: str, kind: str = "data") -> Callable[[str], bool]:
    """Paths of checkpoint ``name``: its data (and temporary siblings), its manifest, or the pending
    marker a remote save writes first."""
    escaped = re.escape(name)
    pattern = {
        "data": rf"\.?{escaped}(\.ckpthooks-tmp-.*)?",
        "manifest": rf"\.?{escaped}\.manifest\.json(\.ckpthooks-tmp-.*)?",
        "pending": rf"\.{escaped}\.ckpthooks-pending",
        "any": ".*",
    }[kind]
    compiled = re.compile(pattern)
    return lambda path: compiled.fullmatch(posixpath.basename(path)) is not None


# ---------------------------------------------------------------------- local faults (monkeypatch)


class _FaultyLocalFile:
    """A real file opened for writing whose write, flush and close may fail on cue."""

    def __init__(self, handle: Any, path: str, check: Callable[[str, str], None]) -> None:
        self._handle, self._path, self._check = handle, path, check

    def write(self, data: Any) -> Any:
        self._check("write", self._path)
        return self._handle.write(data)

    def flush(self) -> None:
        self._check("flush", self._path)
        self._handle.flush()

    def close(self) -> None:
        if self._handle.closed:
            return
        self._handle.close()  # the descriptor is released either way, as close(2) does
        self._check("close", self._path)

    def __enter__(self) -> _FaultyLocalFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class LocalFaults:
    """Faults on local disk: ``open`` and ``os.open`` (read), file ``write``/``flush``/``close``, ``os.fsync``,
    ``os.replace`` (rename) and ``os.remove`` (delete), counted with the same :class:`Fault` objects
    as the faulty filesystem."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.faults: list[Fault] = []
        real_open, real_fsync, real_replace, real_remove = builtins.open, os.fsync, os.replace, os.remove
        real_os_open = os.open
        check = self.check
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

        def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if isinstance(path, (str, os.PathLike)) and not flags & writing:
                check("read", os.fspath(path))  # reads of regular files only (open_regular)
            return real_os_open(path, flags, *args, **kwargs)

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if not isinstance(file, (str, os.PathLike)):
                return real_open(file, mode, *args, **kwargs)
            path = os.fspath(file)
            if not any(flag in mode for flag in "wax+"):
                check("read", path)
                return real_open(file, mode, *args, **kwargs)
            return _FaultyLocalFile(real_open(file, mode, *args, **kwargs), path, check)

        def fsync(fd: int) -> None:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            check("fsync", path)
            real_fsync(fd)

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            check("rename", os.fspath(dst))
            real_replace(src, dst, *args, **kwargs)

        def remove(path: Any, *args: Any, **kwargs: Any) -> None:
            check("delete", os.fspath(path))
            real_remove(path, *args, **kwargs)

        real_open_direct = durable.open_direct

        def open_direct(path: str, *args: Any) -> Any:  # O_DIRECT writes fail on the same cues
            handle = real_open_direct(path, *args)
            return None if handle is None else _FaultyLocalFile(handle, path, check)

        monkeypatch.setattr(builtins, "open", open_)
        monkeypatch.setattr(durable, "open_direct", open_direct)
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "remove", remove)

    def check(self, operation: str, path: str) -> None:
        for fault in list(self.faults):
            error = fault.hit(operation, path)
            if error is not None:
                raise error

    def inject(self, operation: str, nth: int, error: Any, match: Callable[[str], bool]) -> Fault:
        fault = Fault(operation, nth, error, None, match)
        self.faults.append(fault)
        return fault


# ---------------------------------------------------------------------- backends


@dataclass
class Backend:
    """Where checkpoints go and how faults are injected there."""

    name: str
    root: str
    inject: Callable[[str, int, Any, Callable[[str], bool]], Fault]
    clear: Callable[[], None]

    def path(self, name: str) -> str:
        return paths.join(self.root, name)

    def names(self) -> set[str]:
        """Every object in the folder (data, manifests, markers, temporary files)."""
        fs = paths.filesystem(self.root)
        base = paths.fs_path(fs, self.root)
        return {posixpath.basename(p) for p in fs.find(base)} if fs.exists(base) else set()


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    if request.param == "local":
        local = LocalFaults(monkeypatch)
        root = str(tmp_path / "run")

        def inject_local(operation: str, nth: int, error: Any, match: Callable[[str], bool]) -> Fault:
            return local.inject(operation, nth, error, match)

        yield Backend("local", root, inject_local, local.faults.clear)
        return
    FaultyFileSystem.reset()

    def inject_faulty(operation: str, nth: int, error: Any, match: Callable[[str], bool]) -> Fault:
        return FaultyFileSystem.inject(operation, nth, error, times=None, match=match)

    try:
        yield Backend("faulty", f"faulty://run-{uuid.uuid4().hex[:8]}", inject_faulty, FaultyFileSystem.clear_faults)
    finally:
        FaultyFileSystem.reset()


# ---------------------------------------------------------------------- model and checks


def make_model(value: float = 0.0) -> torch.nn.Linear:
    model = torch.nn.Linear(4, 2)
    fill(model, value)
    return model


def fill(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)


def committed_names(root: str, hidden: bool = False) -> set[str]:
    """Names of the committed checkpoints in ``root``: the visible ones, or (``hidden``) the old
    versions a local overwrite keeps committed as ``.<name>.ckpthooks-prev`` until it succeeds."""
    names = {paths.basename(item.path) for item in iter_committed(root)}
    return {n for n in names if n.startswith(".") == hidden}


def assert_committed(
    backend: Backend,
    expected: dict[str, float],
    checkpointer: Callable[[], Checkpointer],
    kept: dict[str, float] | None = None,
) -> None:
    """Exactly ``expected`` (name -> weight value) is committed, and ``kept`` among the hidden kept
    versions; each verifies and restores the weights it was saved with."""
    assert committed_names(backend.root) == set(expected)
    assert committed_names(backend.root, hidden=True) == set(kept or {})
    for name, value in {**expected, **(kept or {})}.items():
        path = backend.path(name)
        verify_checkpoint(path)
        model = make_model(-1.0)
        report = checkpointer().track(model=model).restore(path)
        assert report is not None and "model" in report.restored
        assert all(torch.all(p == value) for p in model.parameters()), f"{name} restored other weights"


def assert_clear_error(error: BaseException, path: str, cause: BaseException) -> None:
    assert isinstance(error, StorageError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert path in message, message
    if getattr(cause, "errno", None) == errno.ENOSPC:
        assert "disk is full" in message, message
    if isinstance(cause, PermissionError):
        assert "writable" in message, message


def no_temporary_files(backend: Backend) -> bool:
    return not any(TEMP_MARKER in name for name in backend.names())


# ---------------------------------------------------------------------- (1) manual save_checkpoint

# operation, kind of path, error, nth call; per backend. "fails": the save raises.
LOCAL_MANUAL = [
    ("write", "data", disk_full, 1, True),
    ("flush", "data", io_error, 1, True),
    ("close", "data", disk_full, 1, True),
    ("fsync", "data", io_error, 1, True),
    ("rename", "data", permission_denied, 1, True),
    ("write", "manifest", disk_full, 1, True),
    ("fsync", "manifest", io_error, 1, True),
    ("rename", "manifest", permission_denied, 1, True),
    ("read", "manifest", io_error, 1, False),  # "is it committed already?" unreadable: saves anyway
]
FAULTY_MANUAL = [
    ("open", "data", permission_denied, 1, True),
    ("write", "data", disk_full, 2, True),
    ("flush", "data", io_error, 1, True),
    ("commit", "data", timed_out, 1, True),  # retried until the attempts run out
    ("pipe", "manifest", disk_full, 1, True),
    ("pipe", "manifest", timed_out, 1, True),
    ("read", "manifest", io_error, 1, False),
    ("mkdir", "any", permission_denied, 1, True),
    ("rename", "data", permission_denied, 1, False),  # remote saves never rename: nothing to fail
]


def manual_cases() -> list[Any]:
    return [
        pytest.param(backend, *case, id=f"{backend}-{case[0]}-{case[1]}-{case[2].__name__}")
        for backend, table in (("local", LOCAL_MANUAL), ("faulty", FAULTY_MANUAL))
        for case in table
    ]


@pytest.mark.parametrize(
    ("backend", "operation", "kind", "error", "nth", "fails"), manual_cases(), indirect=["backend"]
)
def test_a_fault_during_a_manual_save_keeps_every_committed_checkpoint(
    backend: Backend, operation: str, kind: str, error: ErrorFactory, nth: int, fails: bool
) -> None:
    def checkpointer() -> Checkpointer:
        return Checkpointer(backend.root, enable_checkpointing=False, save_rng_state=False)

    model = make_model()
    ckpt = checkpointer().track(model=model)
    for value, name in ((1.0, "a.ckpt"), (2.0, "b.ckpt")):
        fill(model, value)
        ckpt.save_checkpoint(backend.path(name))
    fill(model, 3.0)
    cause = error(backend.path("c.ckpt"))
    fault = backend.inject(operation, nth, cause, target("c.ckpt", kind))
    if fails:
        with pytest.raises(StorageError) as info:
            ckpt.save_checkpoint(backend.path("c.ckpt"))
        assert fault.fired >= 1
        assert_clear_error(info.value, backend.path("c.ckpt"), cause)
        assert read_manifest(backend.path("c.ckpt")) is None
        expected = {"a.ckpt": 1.0, "b.ckpt": 2.0}
    else:
        ckpt.save_checkpoint(backend.path("c.ckpt"))
        assert fault.fired == (0 if operation == "rename" else 1)
        expected = {"a.ckpt": 1.0, "b.ckpt": 2.0, "c.ckpt": 3.0}
    backend.clear()
    assert_committed(backend, expected, checkpointer)
    assert no_temporary_files(backend)
    # the fault is gone: the same save now works
    ckpt.save_checkpoint(backend.path("c.ckpt"))
    assert_committed(backend, {"a.ckpt": 1.0, "b.ckpt": 2.0, "c.ckpt": 3.0}, checkpointer)


# Saving over an existing checkpoint: the old one is uncommitted first. A fault before its bytes are
# replaced must leave it committed under its name ("kept"). After they are replaced, on local disk it
# survives as the hidden ``.b.ckpt.ckpthooks-prev`` ("previous"); on an object store it is gone
# ("lost"). "saved": the fault came after the commit and the save succeeded.
OVERWRITE = [
    # backend, operation, kind, error, nth, outcome
    ("local", "write", "data", disk_full, 1, "kept"),
    ("local", "fsync", "data", io_error, 1, "kept"),
    ("local", "rename", "data", permission_denied, 1, "kept"),
    ("local", "delete", "manifest", permission_denied, 1, "kept"),  # cannot uncommit: nothing written
    ("local", "write", "manifest", disk_full, 1, "previous"),  # the new bytes replaced it
    ("local", "delete", "previous", permission_denied, 2, "saved"),  # dropping the kept copy failed
    ("faulty", "write", "data", disk_full, 2, "kept"),
    ("faulty", "commit", "data", timed_out, 1, "kept"),
    ("faulty", "delete", "manifest", permission_denied, 1, "kept"),
    ("faulty", "pipe", "pending", disk_full, 1, "kept"),
    ("faulty", "pipe", "manifest", disk_full, 1, "lost"),
]


@pytest.mark.parametrize(
    ("backend", "operation", "kind", "error", "nth", "outcome"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}") for case in OVERWRITE],
    indirect=["backend"],
)
def test_a_failed_save_over_an_existing_checkpoint_keeps_it_when_its_bytes_are_intact(
    backend: Backend, operation: str, kind: str, error: ErrorFactory, nth: int, outcome: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def checkpointer() -> Checkpointer:
        return Checkpointer(backend.root, enable_checkpointing=False, save_rng_state=False)

    model = make_model()
    ckpt = checkpointer().track(model=model)
    for value, name in ((1.0, "a.ckpt"), (2.0, "b.ckpt")):
        fill(model, value)
        ckpt.save_checkpoint(backend.path(name))
    fill(model, 3.0)
    cause = error(backend.path("b.ckpt"))
    match = target(".b.ckpt.ckpthooks-prev", "manifest") if kind == "previous" else target("b.ckpt", kind)
    fault = backend.inject(operation, nth, cause, match)
    if outcome == "saved":
        ckpt.save_checkpoint(backend.path("b.ckpt"))
        assert fault.fired == 1 and "could not remove its previous version" in caplog.text
    else:
        with pytest.raises(StorageError) as info:
            ckpt.save_checkpoint(backend.path("b.ckpt"))
        assert_clear_error(info.value, backend.path("b.ckpt"), cause)
    backend.clear()
    expected = {
        "kept": ({"a.ckpt": 1.0, "b.ckpt": 2.0}, {}),
        "previous": ({"a.ckpt": 1.0}, {".b.ckpt.ckpthooks-prev": 2.0}),
        "lost": ({"a.ckpt": 1.0}, {}),
        "saved": ({"a.ckpt": 1.0, "b.ckpt": 3.0}, {}),
    }[outcome]
    if outcome == "saved":  # the obsolete kept copy stays committed until the next start removes it
        assert committed_names(backend.root, hidden=True) == {".b.ckpt.ckpthooks-prev"}
        checkpointer()
    assert_committed(backend, expected[0], checkpointer, kept=expected[1])
    assert no_temporary_files(backend)


# ---------------------------------------------------------------------- (2) ModelCheckpoint saves

LOSSES = {0: 3.0, 1: 2.0, 2: 1.0, 3: 0.5}


def make_policy(root: str) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=root, filename="{epoch}", monitor="loss", save_top_k=2, save_last=True)


def run_epoch(ckpt: Checkpointer, model: torch.nn.Module, epoch: int) -> None:
    """One epoch of one step; the weights are ``epoch + 1`` everywhere when it saves."""
    ckpt.epoch_start(epoch)
    for _ in ckpt.batches(range(1)):
        fill(model, epoch + 1.0)
    ckpt.log("loss", LOSSES[epoch])
    ckpt.epoch_end()


@dataclass(frozen=True)
class Outcome:
    """What epoch 2 (loss 1.0: ``epoch=2.ckpt`` displaces ``epoch=0.ckpt``, then ``last.ckpt``) left."""

    raises: bool
    committed: dict[str, float]  # name -> weight value
    best_k: frozenset[str]
    last: str  # "" when no committed last file is known


E0, E1, E2, LAST = "epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"
#: the top-k write of epoch 2 failed before its commit; last.ckpt was not attempted (the error stopped it)
TOPK_FAILED = Outcome(True, {E0: 1, E1: 2, LAST: 2}, frozenset({E0, E1}), LAST)
#: epoch 2 committed, but deleting the displaced epoch=0.ckpt failed (or it was not provably ours)
PRUNE_KEPT = Outcome(False, {E0: 1, E1: 2, E2: 3, LAST: 3}, frozenset({E1, E2}), LAST)
#: its manifest went, its data could not: it is uncommitted (and left on storage)
PRUNED = Outcome(False, {E1: 2, E2: 3, LAST: 3}, frozenset({E1, E2}), LAST)
#: epoch 2 committed; rewriting last.ckpt failed before its old bytes were replaced
LAST_KEPT = Outcome(True, {E1: 2, E2: 3, LAST: 2}, frozenset({E1, E2}), LAST)
#: rewriting last.ckpt failed after its bytes were replaced: it is uncommitted and forgotten
LAST_LOST = Outcome(True, {E1: 2, E2: 3}, frozenset({E1, E2}), "")

POLICY = [
    # backend, operation, file, kind, error, nth, outcome
    ("local", "write", "epoch=2.ckpt", "data", disk_full, 1, TOPK_FAILED),
    ("local", "close", "epoch=2.ckpt", "data", io_error, 1, TOPK_FAILED),
    ("local", "fsync", "epoch=2.ckpt", "data", io_error, 1, TOPK_FAILED),
    ("local", "rename", "epoch=2.ckpt", "data", permission_denied, 1, TOPK_FAILED),
    ("local", "write", "epoch=2.ckpt", "manifest", disk_full, 1, TOPK_FAILED),
    ("local", "delete", "epoch=0.ckpt", "manifest", permission_denied, 1, PRUNE_KEPT),
    ("local", "delete", "epoch=0.ckpt", "data", permission_denied, 1, PRUNED),  # data stays, uncommitted
    ("local", "read", "epoch=0.ckpt", "manifest", io_error, 1, PRUNE_KEPT),  # not provably ours: kept
    ("local", "write", "last.ckpt", "data", disk_full, 1, LAST_KEPT),
    ("local", "rename", "last.ckpt", "data", permission_denied, 1, LAST_KEPT),
    ("local", "delete", "last.ckpt", "manifest", permission_denied, 1, LAST_KEPT),
    ("local", "rename", "last.ckpt", "manifest", disk_full, 1, LAST_LOST),
    ("faulty", "write", "epoch=2.ckpt", "data", disk_full, 2, TOPK_FAILED),
    ("faulty", "flush", "epoch=2.ckpt", "data", io_error, 1, TOPK_FAILED),
    ("faulty", "commit", "epoch=2.ckpt", "data", timed_out, 1, TOPK_FAILED),
    ("faulty", "pipe", "epoch=2.ckpt", "manifest", disk_full, 1, TOPK_FAILED),
    ("faulty", "delete", "epoch=0.ckpt", "manifest", permission_denied, 1, PRUNE_KEPT),
    ("faulty", "delete", "epoch=0.ckpt", "data", permission_denied, 1, PRUNED),
    ("faulty", "read", "epoch=0.ckpt", "manifest", io_error, 1, PRUNE_KEPT),
    ("faulty", "write", "last.ckpt", "data", disk_full, 2, LAST_KEPT),
    ("faulty", "delete", "last.ckpt", "manifest", permission_denied, 1, LAST_KEPT),
    ("faulty", "pipe", "last.ckpt", "manifest", timed_out, 1, LAST_LOST),
]


def policy_cases() -> list[Any]:
    return [
        pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}-{case[3]}-{case[4].__name__}") for case in POLICY
    ]


def start_policy_run(backend: Backend, on_save_error: str) -> tuple[Checkpointer, ModelCheckpoint, torch.nn.Module]:
    policy = make_policy(backend.root)
    ckpt = Checkpointer(
        backend.root, callbacks=[policy], save_rng_state=False, on_save_error=on_save_error  # type: ignore[arg-type]
    )
    model = make_model()
    ckpt.track(model=model)
    ckpt.fit_start()
    for epoch in (0, 1):
        run_epoch(ckpt, model, epoch)
    assert committed_names(backend.root) == {"epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"}
    return ckpt, policy, model


def assert_bookkeeping(backend: Backend, policy: ModelCheckpoint, best_k: frozenset[str], last: str) -> None:
    """The policy's view (best_k_models, best_model_path, last_model_path) matches storage."""
    committed = committed_names(backend.root)
    names = {paths.basename(p): s for p, s in policy.best_k_models.items()}
    assert set(names) == best_k
    assert set(names) <= committed
    assert paths.basename(policy.best_model_path) == min(names, key=lambda n: names[n])
    assert paths.basename(policy.last_model_path) == last
    if last:
        assert last in committed
        assert policy.last_model_path == backend.path(last)
    for path in policy.best_k_models:
        assert path == backend.path(paths.basename(path))


def restore_checkpointer(backend: Backend) -> Callable[[], Checkpointer]:
    return lambda: Checkpointer(backend.root, callbacks=[make_policy(backend.root)], save_rng_state=False)


@pytest.mark.parametrize(
    ("backend", "operation", "name", "kind", "error", "nth", "outcome"), policy_cases(), indirect=["backend"]
)
def test_a_fault_during_a_policy_save_keeps_storage_and_bookkeeping_consistent(
    backend: Backend,
    operation: str,
    name: str,
    kind: str,
    error: ErrorFactory,
    nth: int,
    outcome: Outcome,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ckpt, policy, model = start_policy_run(backend, "raise")
    cause = error(backend.path(name))
    fault = backend.inject(operation, nth, cause, target(name, kind))
    if outcome.raises:
        with pytest.raises(StorageError) as info:
            run_epoch(ckpt, model, 2)
        assert_clear_error(info.value, backend.path(name), cause)
    else:
        run_epoch(ckpt, model, 2)  # the fault came after the commit: the save succeeded
        said = "ignoring unreadable manifest" if operation == "read" else "older files may be left behind"
        assert said in caplog.text
    assert fault.fired >= 1
    backend.clear()
    failed = {"epoch=2.ckpt"} if outcome is TOPK_FAILED else {"last.ckpt"} if outcome is LAST_LOST else set()
    for failed_name in failed:
        assert read_manifest(backend.path(failed_name)) is None
    # a local overwrite of last.ckpt that failed after replacing its bytes keeps the old one hidden
    kept = {".last.ckpt.ckpthooks-prev": 2.0} if outcome is LAST_LOST and backend.name == "local" else {}
    assert_committed(backend, outcome.committed, restore_checkpointer(backend), kept=kept)
    assert_bookkeeping(backend, policy, outcome.best_k, outcome.last)
    assert no_temporary_files(backend)


LOGGED = [
    # backend, operation, file, kind, error, nth, what epoch 2 left (committed name -> weights, last)
    ("local", "write", E2, "data", disk_full, 1, ({E0: 1, E1: 2, LAST: 3}, LAST)),  # last.ckpt still saved
    ("local", "rename", LAST, "data", permission_denied, 1, ({E1: 2, E2: 3, LAST: 2}, LAST)),
    ("local", "rename", LAST, "manifest", disk_full, 1, ({E1: 2, E2: 3}, "")),
    ("faulty", "write", E2, "data", disk_full, 2, ({E0: 1, E1: 2, LAST: 3}, LAST)),
    ("faulty", "commit", LAST, "data", timed_out, 1, ({E1: 2, E2: 3, LAST: 2}, LAST)),
    ("faulty", "pipe", LAST, "manifest", timed_out, 1, ({E1: 2, E2: 3}, "")),
]


@pytest.mark.parametrize(
    ("backend", "operation", "name", "kind", "error", "nth", "left"),
    [pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[2]}-{case[3]}") for case in LOGGED],
    indirect=["backend"],
)
def test_with_on_save_error_log_training_goes_on_and_the_next_save_commits(
    backend: Backend,
    operation: str,
    name: str,
    kind: str,
    error: ErrorFactory,
    nth: int,
    left: tuple[dict[str, float], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ckpt, policy, model = start_policy_run(backend, "log")
    backend.inject(operation, nth, error(backend.path(name)), target(name, kind))
    run_epoch(ckpt, model, 2)  # does not raise
    assert "checkpoint save failed at step 3; training goes on" in caplog.text
    assert backend.path(name) in caplog.text
    backend.clear()
    committed, last = left
    best_k = {E0, E1} if name == E2 else {E1, E2}
    kept = {".last.ckpt.ckpthooks-prev": 2.0} if not last and backend.name == "local" else {}
    assert_committed(backend, committed, restore_checkpointer(backend), kept=kept)
    assert_bookkeeping(backend, policy, frozenset(best_k), last)
    # training went on; the next epoch (loss 0.5) saves normally, last.ckpt included
    run_epoch(ckpt, model, 3)
    ckpt.fit_end()
    best_k = {E1, "epoch=3.ckpt"} if name == E2 else {E2, "epoch=3.ckpt"}
    assert_bookkeeping(backend, policy, frozenset(best_k), LAST)
    expected = {n: float(n[len("epoch=") : -len(".ckpt")]) + 1 for n in best_k}
    assert_committed(backend, {**expected, LAST: 4.0}, restore_checkpointer(backend))
    assert no_temporary_files(backend)


# ---------------------------------------------------------------------- the faulty filesystem itself


def test_faulty_filesystem_counts_calls_and_fails_only_the_nth(faulty_fs: type[FaultyFileSystem]) -> None:
    import fsspec

    fs = fsspec.filesystem("faulty")
    with faulty_fs.inject("pipe", nth=2, error=disk_full(), match="x/") as fault:
        fs.pipe_file("faulty://x/1", b"one")
        with pytest.raises(OSError, match="No space left on device") as info:
            fs.pipe_file("faulty://x/2", b"two")
        assert info.value.errno == errno.ENOSPC
        fs.pipe_file("faulty://x/3", b"three")
        fs.pipe_file("faulty://y/1", b"other folder: never counted")
    assert (fault.calls, fault.fired, fault.paths) == (3, 1, ["/x/2"])
    assert faulty_fs.faults == []
    assert sorted(faulty_fs.store) == ["/x/1", "/x/3", "/y/1"]
    assert faulty_fs.calls["pipe"] == 4


def test_faulty_filesystem_publishes_on_close_and_discards_on_request(faulty_fs: type[FaultyFileSystem]) -> None:
    import fsspec

    fs = fsspec.filesystem("faulty")
    handle = fs.open("faulty://d/a", "wb")
    handle.write(b"abc")
    assert not fs.exists("faulty://d/a")  # not visible before it is committed
    handle.close()
    assert fs.cat_file("faulty://d/a") == b"abc"
    with faulty_fs.inject("commit", error=timed_out()):
        handle = fs.open("faulty://d/b", "wb")
        handle.write(b"x")
        with pytest.raises(TimeoutError):
            handle.close()
        handle.close()  # closing again does not publish either
    assert not fs.exists("faulty://d/b")
    with fs.open("faulty://d/c", "wb", autocommit=False) as handle:
        handle.write(b"partial")
        handle.discard()
    assert not fs.exists("faulty://d/c")
    with faulty_fs.inject("rename", error=PermissionError), pytest.raises(PermissionError, match="rename"):
        fs.mv("faulty://d/a", "faulty://d/z")
    fs.mv("faulty://d/a", "faulty://d/z")
    assert fs.cat_file("faulty://d/z") == b"abc" and not fs.exists("faulty://d/a")
    with faulty_fs.inject("read", times=None), pytest.raises(OSError, match="Input/output error"):
        fs.cat_file("faulty://d/z")
    with pytest.raises(ValueError, match="unknown operation"):
        faulty_fs.inject("fsync")
