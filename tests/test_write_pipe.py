"""WritePipe: remote writes on a worker thread, bounded, ordered, failures raised in the producer."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest

from ckpthooks._io import pipe as pipe_module
from ckpthooks._io.pipe import WritePipe


class _Recording(io.RawIOBase):
    def __init__(self) -> None:
        self.data = bytearray()
        self.calls: list[str] = []

    def write(self, data: Any) -> int:
        self.data += data
        self.calls.append("write")
        return len(data)

    def flush(self) -> None:
        self.calls.append("flush")


def test_bytes_arrive_in_order_and_are_copied_when_handed_over() -> None:
    handle = _Recording()
    pipe = WritePipe(handle)
    buffer = bytearray(b"first")
    pipe.write(memoryview(buffer))
    buffer[:] = b"XXXXX"  # torch reuses the memory it passed once write returns
    pipe.write(b"-second")
    pipe.flush()
    pipe.write(b"-third")
    pipe.close()
    assert bytes(handle.data) == b"first-second-third"
    assert handle.calls == ["write", "write", "flush", "write"]


def test_large_writes_are_split_and_the_queue_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipe_module, "PIECE", 10)
    release = threading.Event()

    class _Slow(_Recording):
        def write(self, data: Any) -> int:
            release.wait(timeout=30)
            return super().write(data)

    handle = _Slow()
    pipe = WritePipe(handle, max_buffered=30)
    done = threading.Event()

    def produce() -> None:
        pipe.write(bytes(range(100)))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(timeout=0.5)  # 100 bytes cannot all wait: the producer is held back
    assert pipe._buffered <= 30
    release.set()
    producer.join(timeout=30)
    pipe.close()
    assert bytes(handle.data) == bytes(range(100))
    assert handle.calls.count("write") == 10


def test_the_producer_goes_on_while_the_handle_is_busy() -> None:
    """The point of the pipe: a write that blocks (an upload) does not block the producer."""
    uploading = threading.Event()
    finish_upload = threading.Event()

    class _Uploading(_Recording):
        def write(self, data: Any) -> int:
            uploading.set()
            assert finish_upload.wait(timeout=30)
            return super().write(data)

    handle = _Uploading()
    pipe = WritePipe(handle)
    pipe.write(b"part one")
    assert uploading.wait(timeout=30)
    pipe.write(b" and part two")  # returns although the first write has not finished
    finish_upload.set()
    pipe.close()
    assert bytes(handle.data) == b"part one and part two"


def test_a_failed_write_is_raised_by_the_next_write_and_by_close() -> None:
    class _Failing(_Recording):
        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

    pipe = WritePipe(_Failing())
    pipe.write(b"x")
    with pytest.raises(OSError, match="No space"):
        for _ in range(1000):  # the worker reports the failure soon
            pipe.write(b"y")
            threading.Event().wait(0.01)
    with pytest.raises(OSError, match="No space"):
        pipe.close()


def test_abort_drops_what_is_queued() -> None:
    inside = threading.Event()
    gate = threading.Event()

    class _Gated(_Recording):
        def write(self, data: Any) -> int:
            inside.set()
            gate.wait(timeout=30)
            return super().write(data)

    handle = _Gated()
    pipe = WritePipe(handle)
    for n in range(5):
        pipe.write(b"%d" % n)
    assert inside.wait(timeout=30)  # the worker is writing piece 0; pieces 1-4 wait
    aborting = threading.Thread(target=pipe.abort)
    aborting.start()
    while not pipe._stopping:
        threading.Event().wait(0.001)
    gate.set()
    aborting.join(timeout=30)
    assert bytes(handle.data) == b"0"
    assert not pipe._worker.is_alive()


def test_max_buffered_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WritePipe(_Recording(), max_buffered=0)
