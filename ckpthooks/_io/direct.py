"""Local checkpoint writes at the device's speed: ``O_DIRECT`` through aligned, double buffers.

Buffered writes copy every byte into the page cache, and the kernel's writeback of those pages is
what limits a checkpoint save on a fast disk (a fifth of the device, measured: docs/performance.md).
:class:`DirectFile` copies the bytes the serializer writes into one of two page-aligned buffers;
when a buffer is full, a worker thread writes it with ``O_DIRECT`` (no page-cache copy) while the
serializer fills the other one. The file's last bytes (less than a block) are written through the
page cache once ``O_DIRECT`` is cleared, so the file has its exact size without padding. The bytes
on disk are the same as those of a buffered write; durability is the caller's ``fsync``, as before.

Where the file system refuses ``O_DIRECT`` (ramfs, tmpfs before Linux 6.6, some network or overlay
file systems: ``EINVAL`` at open or at the first write), the file is written through the page cache
instead, by itself.
``CKPTHOOKS_DIRECT_IO=0`` in the environment, or ``direct_io=False`` where a backend takes it,
turns direct I/O off.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["DirectFile", "direct_io_default", "open_direct"]

#: File offsets, lengths and buffer addresses of ``O_DIRECT`` writes are multiples of this (the
#: largest logical block size in use; 512-byte devices accept it too).
ALIGN = 4096
#: Size of each of the two buffers (a multiple of :data:`ALIGN`).
BUFFER_SIZE = 16 * 1024 * 1024
#: errno values meaning "this file system or file does not do O_DIRECT"
_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def direct_io_default() -> bool:
    """Whether local writes use ``O_DIRECT`` when nothing says otherwise: where the platform has it,
    unless ``CKPTHOOKS_DIRECT_IO`` is ``0``, ``false`` or ``no``."""
    if not _O_DIRECT:
        return False
    return os.environ.get("CKPTHOOKS_DIRECT_IO", "1").strip().lower() not in ("0", "false", "no", "off")


class _BufferPool:
    """Pairs of page-aligned buffers, kept between saves: a save does not fault in 32 MiB of fresh
    pages, and the resident memory of saves stays two buffers per concurrent save."""

    def __init__(self) -> None:
        self._free: list[tuple[mmap.mmap, mmap.mmap]] = []
        self._lock = threading.Lock()

    def acquire(self, size: int) -> tuple[mmap.mmap, mmap.mmap]:
        with self._lock:
            for index, pair in enumerate(self._free):
                if len(pair[0]) == size:
                    return self._free.pop(index)
        return mmap.mmap(-1, size), mmap.mmap(-1, size)

    def release(self, pair: tuple[mmap.mmap, mmap.mmap]) -> None:
        with self._lock:
            self._free.append(pair)
            # the buffers of two concurrent saves are kept at most: the oldest go
            evicted, self._free = self._free[:-2], self._free[-2:]
        for old in evicted:
            for buffer in old:
                with contextlib.suppress(BufferError):  # a view still exported: the mmap goes with it
                    buffer.close()


_POOL = _BufferPool()


class _Write(threading.Thread):
    """One buffer's write on a thread of its own (a thread per 16 MiB costs well under 1%);
    :meth:`result` waits for it and raises its error. Where no thread can be started (at
    interpreter exit, when an async save is flushed), the write runs on the caller's thread."""

    def __init__(self, write: Callable[[memoryview, int], None], view: memoryview, offset: int) -> None:
        super().__init__(name="ckpthooks-direct-write", daemon=True)
        self._write, self._view, self._offset = write, view, offset
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._write(self._view, self._offset)
        except BaseException as exc:  # raised again on the caller's thread by result()
            self._error = exc
        finally:
            self._view.release()

    def launch(self) -> None:
        try:
            self.start()
        except RuntimeError:  # "can't start new thread" (interpreter exit, thread limits)
            self.run()

    def result(self) -> None:
        if self.is_alive() or self.ident is not None:
            self.join()
        if self._error is not None:
            raise self._error


def open_direct(path: str, buffer_size: int = BUFFER_SIZE) -> DirectFile | None:
    """A new file at ``path`` (which must not exist) written with ``O_DIRECT``; ``None`` where the
    platform or the file system has no direct I/O (then write it the ordinary way)."""
    if not _O_DIRECT:
        return None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _O_DIRECT
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno in _REFUSED:
            log.debug("O_DIRECT refused for %s (%s); writing through the page cache", path, exc)
            # some file systems (ramfs) create the file before refusing; it did not exist (O_EXCL)
            with contextlib.suppress(OSError):
                os.remove(path)
            return None
        raise
    return DirectFile(fd, path, buffer_size)


class DirectFile:
    """A write-only binary file written with ``O_DIRECT`` from two aligned buffers (see the module
    docstring). ``write`` copies into the current buffer; a full buffer is written by a worker
    thread while the next one fills. ``flush`` writes everything written so far (the last partial
    block through the page cache: after it, the file is written buffered); an error of a write
    surfaces at the next ``write``, ``flush`` or ``close``. :meth:`hash_into` feeds the bytes to a
    hasher a buffer at a time."""

    def __init__(self, fd: int, path: str, buffer_size: int = BUFFER_SIZE) -> None:
        if buffer_size % ALIGN:
            raise ValueError(f"buffer_size must be a multiple of {ALIGN}, not {buffer_size}")
        self.name = path
        self._fd = fd
        self._size = buffer_size
        self._pair: tuple[mmap.mmap, mmap.mmap] | None = _POOL.acquire(buffer_size)
        self._views = [memoryview(buffer) for buffer in self._pair]
        self._current = 0  # the buffer being filled
        self._filled = 0  # bytes in it
        self._offset = 0  # where in the file that buffer goes
        self._direct = True
        self._pending: _Write | None = None
        self._hasher: Any = None
        self.closed = False

    # ------------------------------------------------------------------ file API
    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def hexdigest(self) -> str:
        """The :meth:`hash_into` hasher's digest of the bytes written so far."""
        if self._hasher is None:
            raise ValueError("no hasher: see hash_into()")
        if self.closed or not self._filled:
            return str(self._hasher.hexdigest())
        partial = self._hasher.copy()  # the bytes of the current buffer are not hashed yet
        partial.update(self._views[self._current][: self._filled])
        return str(partial.hexdigest())

    def tell(self) -> int:
        """Bytes written so far."""
        return self._offset + self._filled

    def hash_into(self, hasher: Any) -> None:
        """Feed every byte of the file to ``hasher.update``, in file order: a whole buffer at a time,
        while the previous buffer is still being written (the serializer's many small writes cost
        no hash call each, and hashing overlaps the disk); the last bytes at :meth:`flush`. Call
        it before the first write. The digest is complete once :meth:`flush` or :meth:`close`
        returned."""
        if self._offset or self._filled:
            raise ValueError("hash_into() must be called before the first write")
        self._hasher = hasher

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        total = view.nbytes
        filled = self._filled
        if filled + total < self._size:  # the common case: it fits, with room left
            self._views[self._current][filled : filled + total] = view
            self._filled = filled + total
            return total
        done = 0
        while done < total:
            take = min(total - done, self._size - self._filled)
            self._views[self._current][self._filled : self._filled + take] = view[done : done + take]
            self._filled += take
            done += take
            if self._filled == self._size:
                self._submit(self._size)
        return total

    def flush(self) -> None:
        """Write out everything written so far; the file then holds exactly those bytes."""
        if self.closed:
            return
        tail = self._filled
        aligned = tail - tail % ALIGN if self._direct else tail
        if aligned:
            self._submit(aligned, keep=tail - aligned)
        self._wait()
        rest = self._filled
        if rest:  # less than a block: through the page cache, so the file has its exact size
            self._buffered()
            last = self._views[self._current][:rest]
            if self._hasher is not None:
                self._hasher.update(last)
            self._write_at(last, self._offset)
            self._offset += rest
            self._filled = 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._release()

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # an error: stop, do not write the rest
            self._release()

    # ------------------------------------------------------------------ internals
    def _submit(self, length: int, keep: int = 0) -> None:
        """Hand the first ``length`` bytes of the current buffer to the worker and switch buffers;
        the ``keep`` bytes after them move to the start of the next buffer."""
        buffer = self._views[self._current]
        if self._hasher is not None:  # while the other buffer's write is still going
            self._hasher.update(buffer[:length])
        self._wait()  # the other buffer is free again once its write is done
        offset = self._offset
        self._pending = _Write(self._write_at, buffer[:length], offset)
        self._pending.launch()
        self._offset += length
        nxt = 1 - self._current
        if keep:
            self._views[nxt][:keep] = buffer[length : length + keep]
        self._current, self._filled = nxt, keep

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write_at(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < view.nbytes:
            try:
                done += os.pwrite(self._fd, view[done:], offset + done)
            except OSError as exc:
                if not (self._direct and exc.errno in _REFUSED):
                    raise
                log.debug("O_DIRECT write refused for %s (%s); writing through the page cache", self.name, exc)
                self._buffered()

    def _buffered(self) -> None:
        if self._direct:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
            self._direct = False

    def _release(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            pending, self._pending = self._pending, None
            if pending is not None:
                with contextlib.suppress(BaseException):  # wait for it; its error is not this call's
                    pending.result()
        finally:
            for view in self._views:
                view.release()
            pair, self._pair = self._pair, None
            if pair is not None:
                _POOL.release(pair)
            os.close(self._fd)
