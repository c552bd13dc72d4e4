"""Measurements that fill fresh memory, each in an exec'd process of its own: the memcpy floor and
async saves. (A forked child fills fresh memory measurably slower than a new process; see
:func:`benchmarks.common.in_child`.) Started by :mod:`benchmarks.disk`, once per repetition:

    python -m benchmarks.fresh memcpy|async --state-bytes N --workdir DIR --out FILE
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import peak_rss_bytes, reset_peak_rss, rss_bytes, trim_heap, write_json
from benchmarks.state import TrainingState, build_state, build_tiny


def memcpy(state: TrainingState) -> dict[str, Any]:
    """The floor for a snapshot: every checkpoint tensor copied into fresh memory
    (``empty_like`` + ``copy_``) with torch's default thread count and with one thread (OpenMP
    hand-offs cost more than they gain on a small or busy machine), then into the same, already
    touched, buffers again. The heap is trimmed in between, so each fresh copy faults its pages in."""
    tensors = state.tensors()
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    threads = torch.get_num_threads()
    result: dict[str, Any] = {"bytes": nbytes, "threads": threads}
    trim_heap()
    reset_peak_rss()
    base = rss_bytes()
    start = time.perf_counter()
    copies = [torch.empty_like(t).copy_(t) for t in tensors]
    result["fresh_seconds"] = time.perf_counter() - start
    result["peak_increase"] = peak_rss_bytes() - base
    start = time.perf_counter()
    for copy, t in zip(copies, tensors):
        copy.copy_(t)
    result["warm_seconds"] = time.perf_counter() - start
    del copies
    trim_heap()
    torch.set_num_threads(1)
    start = time.perf_counter()
    again = [torch.empty_like(t).copy_(t) for t in tensors]
    result["fresh_seconds_one_thread"] = time.perf_counter() - start
    torch.set_num_threads(threads)
    del again
    return result


def async_saves(state: TrainingState, root: Path) -> dict[str, Any]:
    """Blocked time (until ``save_checkpoint`` returns) and total time (until ``wait()`` returns) of
    a first and a second async save; peaks are relative to the RSS before the first save
    (buffers kept for the next save count)."""
    from ckpthooks import Checkpointer

    def make(st: TrainingState, folder: Path) -> Any:
        ckpt = Checkpointer(default_root_dir=folder, preemption_signals=None, async_save=True)
        return ckpt.track(model=st.model, optimizers=st.optimizer)

    warm = make(build_tiny(), root / "warm")  # imports, plugins, the worker thread's first call
    warm.save_checkpoint(str(root / "warm" / "tiny.ckpt"))
    warm.wait()
    warm.close()
    ckpt = make(state, root)
    result: dict[str, Any] = {}
    trim_heap()
    reset_peak_rss()
    base = rss_bytes()
    for label in ("first", "second"):
        path = str(root / f"async-{label}.ckpt")
        start = time.perf_counter()
        ckpt.save_checkpoint(path)
        blocked = time.perf_counter() - start
        ckpt.wait()
        total = time.perf_counter() - start
        result[label] = {
            "blocked_seconds": blocked,
            "total_seconds": total,
            "peak_increase": peak_rss_bytes() - base,
            "bytes": Path(path).stat().st_size,
        }
        reset_peak_rss()
    ckpt.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("task", choices=("memcpy", "async"))
    parser.add_argument("--state-bytes", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    state = build_state(args.state_bytes)
    gc.collect()
    if args.task == "memcpy":
        result = memcpy(state)
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = async_saves(state, args.workdir)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
