"""Writing one object to S3 with several parts uploading at once.

An s3fs file uploads a part whenever its buffer fills and waits for it, so a streamed write runs
at the speed of one connection. ``fs.pipe_file`` uploads up to ``max_concurrency`` parts at once,
but needs all the bytes in memory first. :class:`ConcurrentUpload` streams *and* overlaps: each
full part is handed to s3fs's event loop, and at most ``concurrency`` parts are in flight (the
writer waits for the oldest one beyond that), so memory stays at ``part_size * (concurrency + 1)``.

An object smaller than one part is written with a single PUT. A failure aborts the multipart
upload, so no partial object is ever published under the name.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

#: How many parts upload at once at most (s3fs's ``max_concurrency`` may lower it).
MAX_CONCURRENCY = 4
#: S3's smallest part (except the last one).
MIN_PART_SIZE = 5 * 2**20


def supports(fs: Any) -> bool:
    """Whether ``fs`` is an s3fs filesystem whose calls this module knows how to make."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "s3" in protocols and callable(getattr(fs, "_call_s3", None)) and getattr(fs, "loop", None) is not None


class ConcurrentUpload:
    """A binary file-like writer to the S3 object ``path`` (``bucket/key``) of the s3fs ``fs``."""

    def __init__(self, fs: Any, path: str, part_size: int | None = None, concurrency: int | None = None) -> None:
        self.fs = fs
        self.path = path
        self.bucket, self.key, _ = fs.split_path(path)
        size: int = part_size or getattr(fs, "default_block_size", None) or 50 * 2**20
        self.part_size = max(int(size), MIN_PART_SIZE)
        self.concurrency = max(1, min(concurrency or MAX_CONCURRENCY, int(getattr(fs, "max_concurrency", 1) or 1)))
        self._pieces: list[bytes] = []  # what the next part will hold
        self._pending = 0
        self._upload_id: str | None = None
        self._in_flight: list[tuple[int, concurrent.futures.Future[Any]]] = []
        self._parts: list[dict[str, Any]] = []
        self._closed = False

    # ------------------------------------------------------------------ file-like
    def write(self, data: Any) -> int:
        """Take ``data`` (copied unless it is ``bytes``); a part goes out as soon as it is full."""
        piece = data if type(data) is bytes else bytes(memoryview(data).cast("B"))
        size = len(piece)
        while self._pending + len(piece) >= self.part_size:
            cut = self.part_size - self._pending
            self._pieces.append(piece[:cut])
            piece = piece[cut:]
            self._upload_part(self._take())
        if piece:
            self._pieces.append(piece)
            self._pending += len(piece)
        return size

    def _take(self) -> bytes:
        part = b"".join(self._pieces)
        self._pieces, self._pending = [], 0
        return part

    def flush(self) -> None:
        """Parts go out as they fill; nothing is forced out early (S3 parts have a minimum size)."""

    def close(self) -> None:
        if self._closed:
            return
        if self._upload_id is None:  # smaller than one part: one PUT
            self._run(self.fs._call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=self._take()))
        else:
            if self._pending:
                self._upload_part(self._take())
            self._wait(0)
            parts = sorted(self._parts, key=lambda part: part["PartNumber"])
            self._run(
                self.fs._call_s3(
                    "complete_multipart_upload",
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
            )
        self._closed = True
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Give up: wait for the parts in flight, then abort the multipart upload (nothing is
        published)."""
        self._closed = True
        self._pieces, self._pending = [], 0
        for _, future in self._in_flight:
            concurrent.futures.wait([future])
        self._in_flight.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._run(
                    self.fs._call_s3("abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=upload_id)
                )
            except Exception as exc:  # the upload is left to the bucket's lifecycle rules
                log.warning("could not abort the multipart upload of %s: %s", self.path, exc)

    # ------------------------------------------------------------------ parts
    def _upload_part(self, data: bytes) -> None:
        if self._upload_id is None:
            created = self._run(self.fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=self.key))
            self._upload_id = created["UploadId"]
        self._wait(self.concurrency - 1)
        number = len(self._parts) + len(self._in_flight) + 1
        future = asyncio.run_coroutine_threadsafe(
            self.fs._call_s3(
                "upload_part", Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=data
            ),
            self.fs.loop,
        )
        self._in_flight.append((number, future))

    def _wait(self, at_most: int) -> None:
        """Collect finished parts (raising the first failure) until at most ``at_most`` are in flight."""
        while self._in_flight and (len(self._in_flight) > at_most or self._in_flight[0][1].done()):
            number, future = self._in_flight.pop(0)
            result = future.result()
            self._parts.append({"PartNumber": number, "ETag": result["ETag"]})

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.fs.loop).result()


def open_for_write(fs: Any, path: str) -> Any:
    """A binary writer to ``path`` (as ``fs`` names it): a :class:`ConcurrentUpload` on S3, the
    filesystem's own file elsewhere. Close it to publish; ``discard()`` (where the writer has it)
    to give up."""
    if supports(fs):
        return ConcurrentUpload(fs, path)
    return fs.open(path, "wb")
