"""Bounded retries of remote storage operations that failed in a way that looks transient.

Object stores and network filesystems fail now and then in ways that go away when the request is
repeated: a dropped connection, a read timeout, an HTTP 500 or a 503 "SlowDown". The remote
operations of ckpthooks (writing and reading checkpoint data, writing, reading and removing
manifests, deleting) go through :func:`call_with_retry`, which repeats them a few times with
exponential backoff and jitter, logs every retry at WARNING level, and after the last attempt raises
:class:`~ckpthooks.exceptions.StorageError` saying how often it tried.

Errors that repeating cannot fix are raised at once: a missing file, a permission problem, a full
disk, a folder where a file was expected, a corrupt checkpoint, and every ckpthooks error.

Configure it for the whole process with :func:`set_default_retry` (``RetryPolicy(attempts=1)``
turns retrying off), or per backend with ``TorchCheckpointIO(retry=RetryPolicy(...))``.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from ckpthooks.exceptions import CheckpointError, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a remote operation is repeated.

    Args:
        attempts: total number of tries, the first one included (``1``: no retry).
        base_delay: seconds before the first retry; each further retry waits twice as long.
        max_delay: upper bound of one wait.
        jitter: fraction of each wait that is randomized (``0.5``: between 50 % and 100 % of it),
            so that many writers do not retry in lockstep.
    """

    attempts: int = 4
    base_delay: float = 0.1
    max_delay: float = 5.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if int(self.attempts) < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts!r}")
        if self.base_delay < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("base_delay and max_delay must be >= 0 and jitter within [0, 1]")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        nominal = min(float(self.max_delay), float(self.base_delay) * 2.0 ** max(retry - 1, 0))
        return nominal * (1.0 - self.jitter * random.random())


#: The policy used where no other is given; replace it with :func:`set_default_retry`.
DEFAULT_RETRY = RetryPolicy()


def set_default_retry(policy: RetryPolicy) -> RetryPolicy:
    """Use ``policy`` for every remote operation without its own policy; returns the previous one."""
    global DEFAULT_RETRY
    previous, DEFAULT_RETRY = DEFAULT_RETRY, policy
    return previous


def get_default_retry() -> RetryPolicy:
    return DEFAULT_RETRY


# ---------------------------------------------------------------------- what counts as transient

_TRANSIENT_ERRNOS = frozenset(
    code
    for code in (
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        getattr(errno, "EREMOTEIO", None),  # s3fs: HTTP 500 InternalError
        errno.EBUSY,  # s3fs: HTTP 503 SlowDown / ServiceUnavailable
    )
    if code is not None
)
_PERMANENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT})
_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    CheckpointError,
)
#: Class names (anywhere in the MRO) of client-library errors that mean "try again": botocore,
#: aiohttp, urllib3, requests and fsspec, matched by name so none of them has to be imported.
_TRANSIENT_CLASS_NAMES = frozenset(
    {
        "TimeoutError",  # asyncio/concurrent.futures timeouts (builtin TimeoutError from 3.11), FSTimeoutError
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "IncompleteReadError",
        "ResponseStreamingError",
        "ClientConnectionError",
        "ServerDisconnectedError",
        "ClientPayloadError",
        "ServerTimeoutError",
        "ProtocolError",
        "ReadTimeout",
        "ConnectTimeout",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "BandwidthLimitExceeded",
    }
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_failure_is_transient(exc: BaseException) -> bool | None:
    """For errors carrying an HTTP response (botocore's ClientError): 5xx, 408, 429 or a throttling
    code are transient, any other status is not; ``None`` when ``exc`` carries no response."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error") or {}
    code = str(error.get("Code", "")) if isinstance(error, dict) else ""
    meta = response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode") if isinstance(meta, dict) else None
    if code in _TRANSIENT_CODES:
        return True
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    return code.isdigit() and (int(code) >= 500 or int(code) in (408, 429))


def is_transient(exc: BaseException) -> bool:
    """Whether repeating the operation that raised ``exc`` may succeed."""
    if isinstance(exc, _PERMANENT_TYPES):
        return False
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_ERRNOS:
        return False
    for error in _chain(exc):
        if isinstance(error, _PERMANENT_TYPES) and error is not exc:
            return False
        http = _http_failure_is_transient(error)
        if http is not None:
            return http
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
            return True
        if any(cls.__name__ in _TRANSIENT_CLASS_NAMES for cls in type(error).__mro__):
            return True
    return False


# ---------------------------------------------------------------------- running with retries


def call_with_retry(
    operation: Callable[[], T],
    *,
    action: str,
    path: str,
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation()``; repeat it while it fails transiently, up to ``policy.attempts`` times.

    ``action`` and ``path`` name the operation in log lines and errors ("write", "s3://b/x.ckpt").
    A non-transient error is raised unchanged at once. When the last attempt fails transiently,
    :class:`StorageError` is raised from that error, saying how many times it was retried.
    """
    policy = policy or DEFAULT_RETRY
    attempts = max(1, int(policy.attempts))
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise _exhausted(action, path, attempts, exc) from exc
            wait = policy.delay(attempt)
            log.warning(
                "%s %s failed transiently (attempt %d of %d): %s: %s; retrying in %.2f s",
                action, path, attempt, attempts, type(exc).__name__, _first_line(exc), wait,
            )
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _exhausted(action: str, path: str, attempts: int, exc: BaseException) -> StorageError:
    retried = attempts - 1
    error = StorageError(
        f"could not {action} {path}: {type(exc).__name__}: {_first_line(exc)} (retried {retried} "
        f"time{'s' if retried != 1 else ''}, {attempts} attempts in all). The storage looks "
        "overloaded or unreachable; try again later, or allow more attempts with "
        "ckpthooks._io.retry.set_default_retry."
    )
    error.errno = getattr(exc, "errno", None)
    return error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
