"""Helpers shared by the benchmark sections: timing, peak memory, page cache, forked measurements.

Every section runs in a process of its own (started by :mod:`benchmarks.run`) and prints its raw
samples as one JSON document; :mod:`benchmarks.report` turns them into the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20

#: Per size: repetitions, bytes of training state, bytes sent through S3, steps of the loop test,
#: checkpoints of the scale test.
SIZES: dict[str, dict[str, int]] = {
    "full": {"reps": 7, "state": 512 * MiB, "s3": 128 * MiB, "steps": 200_000, "checkpoints": 10_000},
    "quick": {"reps": 3, "state": 32 * MiB, "s3": 16 * MiB, "steps": 50_000, "checkpoints": 1_000},
}


def section_args(description: str) -> argparse.Namespace:
    """The command line every section takes: ``--size``, ``--reps``, ``--workdir``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--size", choices=sorted(SIZES), default="quick")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--state-mib", type=int, default=None, help="override the state size")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder (on the disk to measure)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON samples")
    args = parser.parse_args()
    config = dict(SIZES[args.size])
    if args.reps is not None:
        config["reps"] = args.reps
    if args.state_mib is not None:
        config["state"] = args.state_mib * MiB
    args.config = config
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def progress(message: str) -> None:
    """One line on stderr, so that a long run shows where it is."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_bytes() -> int:
    """Resident set size now."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the process started or since :func:`reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> bool:
    """Reset the peak RSS (VmHWM, and ru_maxrss with it) to the current RSS; Linux >= 4.0.

    Returns whether it worked; where it does not, peaks include whatever came before.
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------- disk
def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file someone else wrote and closed, then its folder (what makes a save durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_page_cache() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (needs root); returns whether it worked."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
    except OSError:
        return False
    return True


def evict_file(path: str | os.PathLike[str]) -> None:
    """Drop one file's clean pages from the page cache (no root needed; the fallback)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_cold(paths: Sequence[str | os.PathLike[str]]) -> str:
    """Evict ``paths`` from the page cache: drop_caches where allowed, else fadvise. Returns the method."""
    if drop_page_cache():
        return "drop_caches"
    for path in paths:
        evict_file(path)
    return "fadvise"


def make_warm(paths: Sequence[str | os.PathLike[str]]) -> None:
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(16 * MiB):
                pass


def remove_quietly(*paths: str | os.PathLike[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


# ---------------------------------------------------------------------------------------- processes
def in_child(fn: Callable[[], Any], threads: int | None = None) -> Any:
    """Run ``fn`` in a forked child and return its (JSON-serializable) result.

    The child shares the parent's memory copy-on-write, so the state built once by the parent is
    measured in a fresh process every time without rebuilding it (and without importing torch
    again). The parent must not have entered an OpenMP parallel region (it runs with
    ``torch.set_num_threads(1)``): the child sets ``threads`` itself, which starts a fresh pool.
    A failure in the child is raised in the parent with the child's traceback.

    The parent's free heap is returned to the system first (:func:`trim_heap`): otherwise the
    child's allocations reuse pages it shares with the parent and pay copy-on-write faults. Even
    so, filling fresh memory in a forked child measured about 30% slower than in an exec'd
    process here; measurements dominated by that (the memcpy floor, async snapshots) run in
    exec'd processes instead (:mod:`benchmarks.fresh`).
    """
    trim_heap()
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        code = 0
        try:
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            payload = {"ok": True, "value": fn()}
        except BaseException:
            payload = {"ok": False, "error": traceback.format_exc()}
            code = 1
        try:
            with os.fdopen(write_fd, "wb") as handle:
                handle.write(json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("the measurement child died without a result")
    payload = json.loads(data)
    if not payload["ok"]:
        raise RuntimeError(f"the measurement child failed:\n{payload['error']}")
    return payload["value"]


def trim_heap() -> None:
    """``gc.collect()`` and glibc's ``malloc_trim(0)``: freed memory goes back to the system, so
    that the next allocations start from fresh pages, as in a new process (a no-op elsewhere)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


@contextlib.contextmanager
def single_threaded_parent() -> Iterator[int]:
    """Run the parent single-threaded (safe to fork from); yields the default thread count."""
    import torch

    default = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield default
    finally:
        torch.set_num_threads(default)


def run_command(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
