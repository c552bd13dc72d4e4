"""The bounded retry of remote storage operations: what counts as transient, how often, how long."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

import pytest

from ckpthooks import CorruptCheckpointError, StorageError
from ckpthooks._io import retry
from ckpthooks._io.retry import RetryPolicy, call_with_retry, is_transient

botocore_exceptions = pytest.importorskip("botocore.exceptions")
aiohttp = pytest.importorskip("aiohttp")
s3fs_errors = pytest.importorskip("s3fs.errors")


def client_error(code: str, status: int) -> Any:
    response = {"Error": {"Code": code, "Message": f"{code} happened"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore_exceptions.ClientError(response, "PutObject")


TRANSIENT = [
    ConnectionResetError(errno.ECONNRESET, "reset"),
    ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    BrokenPipeError(errno.EPIPE, "broken pipe"),
    TimeoutError("timed out"),
    asyncio.TimeoutError(),
    OSError(errno.EAGAIN, "try again"),
    OSError(errno.ETIMEDOUT, "timed out"),
    botocore_exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    botocore_exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
    botocore_exceptions.ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"),
    aiohttp.ServerDisconnectedError(),
    client_error("SlowDown", 503),
    client_error("InternalError", 500),
    client_error("Whatever", 502),
    s3fs_errors.translate_boto_error(client_error("SlowDown", 503)),  # what s3fs raises: OSError(EBUSY)
    s3fs_errors.translate_boto_error(client_error("InternalError", 500)),
    s3fs_errors.translate_boto_error(client_error("Unlisted", 504)),  # OSError(EIO) caused by a 504
]
PERMANENT = [
    FileNotFoundError(errno.ENOENT, "no such file"),
    PermissionError(errno.EACCES, "denied"),
    IsADirectoryError(errno.EISDIR, "a folder"),
    OSError(errno.ENOSPC, "disk full"),
    OSError(errno.EIO, "plain I/O error"),
    CorruptCheckpointError("bad bytes"),
    StorageError("already reported"),
    ValueError("a bug"),
    client_error("AccessDenied", 403),
    client_error("InvalidArgument", 400),
    s3fs_errors.translate_boto_error(client_error("NoSuchKey", 404)),  # FileNotFoundError
    s3fs_errors.translate_boto_error(client_error("AccessDenied", 403)),  # PermissionError
    s3fs_errors.translate_boto_error(client_error("Unlisted", 400)),  # OSError(EIO) caused by a 400
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: f"{type(e).__name__}-{getattr(e, 'errno', '')}")
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc) is True


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: f"{type(e).__name__}-{getattr(e, 'errno', '')}")
def test_permanent_errors(exc: BaseException) -> None:
    assert is_transient(exc) is False


class Flaky:
    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_retries_until_success_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=10, jitter=0.5)
    op = Flaky(3, ConnectionResetError(errno.ECONNRESET, "reset"))
    assert call_with_retry(op, action="write", path="s3://b/x.ckpt", policy=policy, sleep=sleeps.append) == "done"
    assert op.calls == 4
    assert len(sleeps) == 3
    for retry_number, slept in enumerate(sleeps, start=1):
        nominal = 0.1 * 2 ** (retry_number - 1)
        assert nominal * 0.5 <= slept <= nominal
    warnings = [r.getMessage() for r in caplog.records if r.name == "ckpthooks._io.retry"]
    assert [w.split("(")[1].split(")")[0] for w in warnings] == ["attempt 1 of 4", "attempt 2 of 4", "attempt 3 of 4"]
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "ckpthooks._io.retry")
    assert "write s3://b/x.ckpt" in warnings[0]


def test_the_last_failure_becomes_a_storage_error_saying_how_often_it_was_retried() -> None:
    cause = OSError(errno.ETIMEDOUT, "timed out")
    op = Flaky(10, cause)
    with pytest.raises(StorageError) as raised:
        call_with_retry(op, action="read", path="s3://b/x.ckpt", policy=RetryPolicy(attempts=3), sleep=lambda s: None)
    assert op.calls == 3
    assert "could not read s3://b/x.ckpt" in str(raised.value)
    assert "retried 2 times, 3 attempts" in str(raised.value)
    assert raised.value.__cause__ is cause and raised.value.errno == errno.ETIMEDOUT


def test_permanent_errors_are_raised_at_once_unchanged() -> None:
    error = PermissionError(errno.EACCES, "denied")
    op = Flaky(10, error)
    with pytest.raises(PermissionError) as raised:
        call_with_retry(op, action="write", path="x", policy=RetryPolicy(attempts=5), sleep=lambda s: None)
    assert raised.value is error and op.calls == 1


def test_one_attempt_means_no_retry() -> None:
    op = Flaky(1, TimeoutError("slow"))
    with pytest.raises(StorageError, match="retried 0 times, 1 attempts"):
        call_with_retry(op, action="write", path="x", policy=RetryPolicy(attempts=1), sleep=lambda s: None)
    assert op.calls == 1


def test_delays_are_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=3.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 10)] == [1.0, 2.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"base_delay": -1.0}, {"max_delay": -1.0}, {"jitter": 1.5}]
)
def test_invalid_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_the_process_default_is_used_and_can_be_replaced() -> None:
    original = retry.get_default_retry()
    previous = retry.set_default_retry(RetryPolicy(attempts=2, base_delay=0))
    try:
        assert previous is original
        op = Flaky(5, ConnectionResetError(errno.ECONNRESET, "reset"))
        with pytest.raises(StorageError, match="2 attempts"):
            call_with_retry(op, action="delete", path="x")
        assert op.calls == 2
    finally:
        retry.set_default_retry(original)
    assert retry.get_default_retry() is original
