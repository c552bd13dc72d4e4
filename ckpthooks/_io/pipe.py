"""A file-like writer that hands its bytes to a worker thread, which writes them to the real file.

Remote files (an s3fs file, ...) upload a part whenever their buffer fills, and the ``write`` call
that fills it waits for the upload. Through a :class:`WritePipe`, serializing and hashing the next
bytes go on while the previous ones upload. The bytes are copied when handed over (``torch.save``
passes views of memory that is only valid during the call), in pieces of at most
:data:`PIECE` bytes, and at most ``max_buffered`` bytes wait at any time, so memory stays bounded
however large a tensor is.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

#: The largest piece copied and queued at once.
PIECE = 8 * 1024 * 1024
#: How many bytes may wait for the worker by default.
MAX_BUFFERED = 64 * 1024 * 1024
_FLUSH = object()


class WritePipe:
    """Writes to ``handle`` on a worker thread. Call :meth:`close` to wait until every byte is
    written (it raises what a write of the handle raised), or :meth:`abort` to give up.

    A failed write of the handle is raised by the next :meth:`write` as well, so the producer stops
    early. The handle itself is neither flushed nor closed here.
    """

    def __init__(self, handle: Any, max_buffered: int = MAX_BUFFERED) -> None:
        if max_buffered < 1:
            raise ValueError("max_buffered must be positive")
        self._handle = handle
        self._max_buffered = max_buffered
        self._pieces: deque[bytes | object | None] = deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._stopping = False
        #: what a write of the handle raised
        self.error: BaseException | None = None
        self._worker = threading.Thread(target=self._run, name="ckpthooks-write-pipe", daemon=True)
        self._worker.start()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, PIECE):
            piece = bytes(view[start : start + PIECE])
            with self._cond:
                while self._buffered and self._buffered + len(piece) > self._max_buffered and self.error is None:
                    self._cond.wait()
                if self.error is not None:
                    raise self.error
                self._pieces.append(piece)
                self._buffered += len(piece)
                self._cond.notify_all()
        return view.nbytes

    def flush(self) -> None:
        """Queue a flush of the handle after the bytes written so far (it runs on the worker; a
        failure is raised by the next call, like a failed write)."""
        with self._cond:
            if self.error is not None:
                raise self.error
            self._pieces.append(_FLUSH)
            self._cond.notify_all()

    def close(self) -> None:
        """Wait until every byte was written to the handle; raise what a write raised."""
        self._finish()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Drop what is still queued and stop the worker (errors are not raised)."""
        with self._cond:
            self._stopping = True  # the worker drops the pieces still queued
        self._finish()

    def _finish(self) -> None:
        with self._cond:
            self._pieces.append(None)
            self._cond.notify_all()
        self._worker.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pieces:
                    self._cond.wait()
                piece = self._pieces.popleft()
            if piece is None:
                return
            try:
                if self._stopping:
                    pass  # aborted: drop what is queued
                elif piece is _FLUSH:
                    self._handle.flush()
                else:
                    self._handle.write(piece)
            except BaseException as exc:  # handed to the producer, raised there
                with self._cond:
                    self.error = exc
                    self._pieces.clear()
                    self._buffered = 0
                    self._cond.notify_all()
                return
            if isinstance(piece, bytes):
                with self._cond:
                    self._buffered -= len(piece)
                    self._cond.notify_all()
