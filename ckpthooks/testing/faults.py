"""Storage fault injection: an fsspec filesystem that fails on cue.

:class:`FaultyFileSystem` is an in-memory fsspec filesystem, registered under the ``faulty://``
protocol when this module is imported. It behaves like ``memory://`` (with a store of its own) until
you *inject* a fault: "make the 2nd write fail with a full disk", "make deleting anything whose path
contains ``epoch=0`` raise ``PermissionError``", "make the manifest upload time out". Use it to test
that a storage backend, a policy or a whole training script keeps its promises when storage fails.

Example (pytest; the ``faulty_fs`` fixture of the ``ckpthooks`` pytest plugin resets the filesystem
before and after the test)::

    import pytest
    import torch
    from ckpthooks import Checkpointer, StorageError
    from ckpthooks._catalog import read_manifest, verify_checkpoint
    from ckpthooks.testing.faults import FaultyFileSystem, disk_full

    def test_a_full_disk_keeps_the_last_good_checkpoint(faulty_fs: type[FaultyFileSystem]) -> None:
        ckpt = Checkpointer("faulty://run", enable_checkpointing=False)
        ckpt.track(model=torch.nn.Linear(4, 2))
        ckpt.save_checkpoint("faulty://run/good.ckpt")
        with faulty_fs.inject("write", nth=2, error=disk_full()) as fault:
            with pytest.raises(StorageError, match="disk is full"):
                ckpt.save_checkpoint("faulty://run/bad.ckpt")
        assert fault.fired == 1
        assert read_manifest("faulty://run/bad.ckpt") is None  # never committed
        verify_checkpoint("faulty://run/good.ckpt")  # still intact

Without pytest, call :meth:`FaultyFileSystem.reset` yourself. Faults and call counts live on the class,
so they apply to every instance fsspec builds for ``faulty://`` URLs (whatever the storage options).

Operations that can fail (``FaultyFileSystem.OPERATIONS``):

``open``
    opening a file for writing (``open(path, "wb")``)
``write``
    ``write()`` on a file opened for writing
``flush``
    ``flush()`` on such a file: the nearest thing to ``fsync`` an object store has (``torch.save``
    flushes once at the end of a checkpoint)
``commit``
    publishing a written file, which is when the object becomes visible: ``close()`` (autocommit,
    the default) or ``commit()`` (``autocommit=False``, transactions)
``pipe``
    ``pipe_file``: a one-shot upload of a whole object (ckpthooks writes commit manifests this way)
``rename``
    ``mv`` / ``rename``
``delete``
    deleting one file (``rm``, ``rm_file``, ``delete``; every file a recursive ``rm`` removes counts)
``read``
    ``cat_file`` / ``cat`` and ``open`` for reading
``mkdir``
    ``mkdir`` / ``makedirs``

As with fsspec's buffered files (``s3://``, ``gs://``), closing a written file publishes what was
written even when the code writing it raised part-way: an object store then holds a truncated object
under the final name. Open with ``autocommit=False`` and call ``commit()`` or ``discard()`` to publish
only complete objects.
"""

from __future__ import annotations

import copy
import errno
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

import fsspec
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

__all__ = [
    "Fault",
    "FaultyFile",
    "FaultyFileSystem",
    "disk_full",
    "io_error",
    "permission_denied",
    "timed_out",
]

#: What an injected fault raises: an exception instance (a copy is raised each time), an exception
#: class (built with a message naming the operation and path), or a callable ``f(path) -> exception``.
ErrorSpec: TypeAlias = "BaseException | type[BaseException] | Callable[[str], BaseException] | None"


def disk_full(path: str | None = None) -> OSError:
    """``OSError(ENOSPC, "No space left on device")``."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([path] if path else []))


def permission_denied(path: str | None = None) -> PermissionError:
    """``PermissionError(EACCES, "Permission denied")``."""
    return PermissionError(errno.EACCES, os.strerror(errno.EACCES), *([path] if path else []))


def io_error(path: str | None = None) -> OSError:
    """A generic ``OSError(EIO, "Input/output error")``."""
    return OSError(errno.EIO, os.strerror(errno.EIO), *([path] if path else []))


def timed_out(path: str | None = None) -> TimeoutError:
    """``TimeoutError(ETIMEDOUT, "Connection timed out")``, as a network store raises it."""
    return TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT), *([path] if path else []))


@dataclass(eq=False)
class Fault:
    """One injected fault: the ``nth`` matching call of ``operation`` (counted from when the fault was
    injected) and the ``times - 1`` matching calls after it raise ``error``; ``times=None`` keeps failing
    until the fault is removed.

    A call matches when its operation is ``operation`` and ``match`` accepts its path (without
    protocol): ``None`` accepts every path, a string every path containing it, a callable every path
    for which it returns true. Use the fault as a context manager to remove it on exit, or call
    :meth:`remove`. :meth:`hit` does the counting, so the same object can drive other injection
    points (a monkeypatched ``os.replace``, say).
    """

    operation: str
    nth: int = 1
    error: ErrorSpec = None
    times: int | None = 1
    match: str | Callable[[str], bool] | None = None
    #: matching calls seen so far
    calls: int = 0
    #: how many times it raised
    fired: int = 0
    #: the paths of the calls it failed
    paths: list[str] = field(default_factory=list)
    _owner: type[FaultyFileSystem] | None = field(default=None, repr=False)

    def matches(self, operation: str, path: str) -> bool:
        if operation != self.operation:
            return False
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return self.match in path
        return bool(self.match(path))

    def due(self) -> bool:
        """Whether the call just counted must fail."""
        if self.calls < self.nth:
            return False
        return self.times is None or self.calls < self.nth + self.times

    def hit(self, operation: str, path: str) -> BaseException | None:
        """Count a call of ``operation`` on ``path``; the exception to raise if it must fail."""
        if not self.matches(operation, path):
            return None
        self.calls += 1
        if not self.due():
            return None
        self.fired += 1
        self.paths.append(path)
        return self.make_error(path)

    def make_error(self, path: str) -> BaseException:
        spec = self.error
        if spec is None:
            return io_error(path)
        if isinstance(spec, BaseException):
            return copy.copy(spec)
        made: BaseException = spec(f"injected {self.operation} fault: {path}") if isinstance(spec, type) else spec(path)
        return made

    def remove(self) -> None:
        """Stop injecting this fault (a no-op when it is gone already)."""
        if self._owner is not None and self in self._owner.faults:
            self._owner.faults.remove(self)

    def __enter__(self) -> Fault:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


class FaultyFile(MemoryFile):  # type: ignore[misc]  # fsspec is untyped
    """A file being written to a :class:`FaultyFileSystem`; visible to readers once committed."""

    def __init__(self, fs: FaultyFileSystem, path: str, data: bytes | None = None, autocommit: bool = True) -> None:
        super().__init__(fs, path, data)
        self.autocommit = autocommit
        self._finished = False
        self._marked_closed = False

    @property
    def closed(self) -> bool:
        # settable, as on fsspec's buffered files (callers mark an abandoned upload closed)
        return self._marked_closed or bool(super().closed)

    @closed.setter
    def closed(self, value: bool) -> None:
        self._marked_closed = bool(value)

    def write(self, data: Any) -> int:
        self.fs._fault("write", self.path)
        written: int = super().write(data)
        return written

    def flush(self) -> None:
        if not self._finished:
            self.fs._fault("flush", self.path)
        super().flush()

    def close(self) -> None:
        if self._finished:
            return
        self._finished = True  # closing twice never publishes twice, even if publishing failed
        if self.autocommit:
            self._publish()

    def commit(self) -> None:
        self._finished = True
        self._publish()

    def discard(self) -> None:
        self._finished = True

    def _publish(self) -> None:
        self.fs._fault("commit", self.path)
        MemoryFile.commit(self)


class FaultyFileSystem(MemoryFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """An in-memory fsspec filesystem (``faulty://``) whose operations fail on cue.

    See the module documentation for the operations and an example. Class attributes hold the state,
    shared by every instance: ``store`` (path -> file), ``faults`` (the injected :class:`Fault` s),
    ``calls`` (a ``Counter`` of every operation performed) and ``history`` (``(operation, path)`` in
    call order, also for calls that failed).
    """

    protocol = "faulty"
    OPERATIONS: ClassVar[tuple[str, ...]] = (
        "open", "write", "flush", "commit", "pipe", "rename", "delete", "read", "mkdir",
    )
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    faults: ClassVar[list[Fault]] = []
    calls: ClassVar[Counter[str]] = Counter()
    history: ClassVar[list[tuple[str, str]]] = []
    _lock: ClassVar[threading.RLock] = threading.RLock()
    _quiet = threading.local()

    # ------------------------------------------------------------------ configuration
    @classmethod
    def inject(
        cls,
        operation: str,
        nth: int = 1,
        error: ErrorSpec = None,
        *,
        times: int | None = 1,
        match: str | Callable[[str], bool] | None = None,
    ) -> Fault:
        """Make the ``nth`` call of ``operation`` on a path ``match`` accepts (and ``times - 1`` more;
        ``None``: all later ones) raise ``error`` (default: ``OSError(EIO)``). Returns the
        :class:`Fault`, which counts its ``calls`` and how often it ``fired``."""
        if operation not in cls.OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {', '.join(cls.OPERATIONS)}")
        if nth < 1 or (times is not None and times < 1):
            raise ValueError("nth and times count from 1")
        fault = Fault(operation, nth, error, times, match, _owner=cls)
        with cls._lock:
            cls.faults.append(fault)
        return fault

    @classmethod
    def clear_faults(cls) -> None:
        """Remove every injected fault; files, counts and history stay."""
        with cls._lock:
            cls.faults.clear()

    @classmethod
    def reset(cls) -> None:
        """Forget every fault, every file and folder, and the call counts and history."""
        with cls._lock:
            cls.faults.clear()
            cls.store.clear()
            cls.pseudo_dirs[:] = [""]
            cls.calls.clear()
            cls.history.clear()

    # ------------------------------------------------------------------ the injection point
    def _fault(self, operation: str, path: str) -> None:
        if getattr(self._quiet, "depth", 0):
            return  # an operation implemented with other operations counts once
        cls = type(self)
        with cls._lock:
            cls.calls[operation] += 1
            cls.history.append((operation, path))
            for fault in list(cls.faults):
                error = fault.hit(operation, path)
                if error is not None:
                    raise error

    @contextmanager
    def _internal(self) -> Iterator[None]:
        self._quiet.depth = getattr(self._quiet, "depth", 0) + 1
        try:
            yield
        finally:
            self._quiet.depth -= 1

    # ------------------------------------------------------------------ paths
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str):
            protocols = (cls.protocol,) if isinstance(cls.protocol, str) else tuple(cls.protocol)
            for protocol in protocols:
                path = path.removeprefix(f"{protocol}://")
        return super()._strip_protocol(path)

    # ------------------------------------------------------------------ operations
    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        path = self._strip_protocol(path)
        if mode in ("wb", "xb", "w+b", "x+b"):
            self._fault("open", path)
            if "x" in mode and self.exists(path):
                raise FileExistsError(path)
            if path in self.pseudo_dirs:
                raise IsADirectoryError(path)
            return FaultyFile(self, path, kwargs.get("data"), autocommit=autocommit)
        if mode == "rb":
            self._fault("read", path)
        return super()._open(path, mode, block_size, autocommit, cache_options, **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        self._fault("read", path)
        data: bytes = super().cat_file(path, start, end, **kwargs)
        return data

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        self._fault("pipe", path)
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        published = FaultyFile(self, path, bytes(value))
        published._finished = True
        MemoryFile.commit(published)

    def _rm(self, path: str) -> None:
        path = self._strip_protocol(path)
        self._fault("delete", path)
        super()._rm(path)

    def mv(self, path1: str, path2: str, recursive: bool = False, maxdepth: int | None = None, **kwargs: Any) -> None:
        source, target = self._strip_protocol(path1), self._strip_protocol(path2)
        self._fault("rename", source)
        if source == target:
            return
        with self._internal():
            if source in self.store:
                moves = {source: target}
            elif self.isdir(source):
                if not recursive:
                    raise IsADirectoryError(source)
                moves = {name: target + name[len(source) :] for name in self.find(source, maxdepth=maxdepth)}
                if target not in self.pseudo_dirs:
                    self.pseudo_dirs.append(target)
            else:
                raise FileNotFoundError(source)
            for old, new in moves.items():
                moved = self.store.pop(old)
                moved.path = new
                self.store[new] = moved

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self._fault("mkdir", self._strip_protocol(path))
        with self._internal():
            super().mkdir(path, create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self._fault("mkdir", self._strip_protocol(path))
        with self._internal():
            super().makedirs(path, exist_ok=exist_ok)


fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
