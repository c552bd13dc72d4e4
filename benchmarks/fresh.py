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


#: optimizer steps between ``fit_start`` and the first save (a real run trains far longer)
STEPS_BEFORE_FIRST_SAVE = 3
#: training steps timed without a save, then right after one was submitted (the background write
#: of 512 MiB takes about as long as 3 steps of the benchmark model here)
STEPS_DURING_SAVE = 3


def train_step(state: TrainingState) -> None:
    """One optimizer step of the benchmark model on a random batch; gradients stay allocated."""
    tokens = torch.randint(state.shape.vocab, (2, 16))
    logits = state.model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, state.shape.vocab), tokens.reshape(-1))
    loss.backward()
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=False)


def async_saves(state: TrainingState, root: Path) -> dict[str, Any]:
    """Async saves as a training run meets them: the checkpointer is set up, ``fit_start`` runs
    (which starts warming up the snapshot buffers), the loop trains for a few steps, then a first
    and a second save. Then, with a new checkpointer, a first save right after ``fit_start``, which
    leaves the warm-up no time (``immediate``).

    Blocked time is until ``save_checkpoint`` returns, total time until ``wait()`` returns. The
    peak RSS increase of a save is the peak while it runs over the RSS just before it, plus the
    buffers the checkpointer already held for it then (warmed up, or kept from an earlier save):
    what checkpointing adds to the process, without what the training steps allocated."""
    from ckpthooks import Checkpointer

    def make(st: TrainingState, folder: Path) -> Any:
        ckpt = Checkpointer(default_root_dir=folder, preemption_signals=None, async_save=True)
        return ckpt.track(model=st.model, optimizers=st.optimizer)

    def held_bytes(ckpt: Any) -> int:
        """Bytes of snapshot buffers the checkpointer holds between saves."""
        saver = getattr(ckpt, "_async", None)
        pool = getattr(saver, "pool", None)
        if pool is not None:
            return int(pool.nbytes)
        spare = getattr(saver, "_spare", None) or []  # before the warm-up existed
        return sum(t.numel() * t.element_size() for buffers in spare for t in buffers)

    def measure(ckpt: Any, path: Path) -> dict[str, Any]:
        held = held_bytes(ckpt)
        before = rss_bytes()
        reset_peak_rss()
        cpu = time.process_time()  # every thread of the process: the copy and the background write
        start = time.perf_counter()
        ckpt.save_checkpoint(str(path))
        blocked = time.perf_counter() - start
        ckpt.wait()
        return {
            "blocked_seconds": blocked,
            "total_seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
            "held_before": held,
            "peak_increase": peak_rss_bytes() - before + held,
            "bytes": path.stat().st_size,
        }

    def steps_during_a_save(ckpt: Any, path: Path) -> dict[str, Any]:
        """Training steps with no save, then the same number right after a save was submitted
        (while the background save writes); their mean times."""
        def timed_steps() -> float:
            start = time.perf_counter()
            for _ in range(STEPS_DURING_SAVE):
                train_step(state)
            return (time.perf_counter() - start) / STEPS_DURING_SAVE

        alone = timed_steps()
        ckpt.save_checkpoint(str(path))
        during = timed_steps()
        ckpt.wait()
        return {"step_seconds": alone, "step_seconds_during_save": during}

    tiny = build_tiny()
    warm = make(tiny, root / "warm")  # imports, plugins, the worker thread's first call
    warm.fit_start()
    train_step(tiny)
    warm.save_checkpoint(str(root / "warm" / "tiny.ckpt"))
    warm.wait()
    warm.close()
    train_step(state)  # training is under way: gradients allocated, first-call costs paid

    result: dict[str, Any] = {"steps_before_first_save": STEPS_BEFORE_FIRST_SAVE, "state_bytes": state.nbytes()}
    ckpt = make(state, root)
    trim_heap()
    start = time.perf_counter()
    ckpt.fit_start()
    for _ in range(STEPS_BEFORE_FIRST_SAVE):
        train_step(state)
    result["work_seconds"] = time.perf_counter() - start
    result["warm_bytes_at_first_save"] = held_bytes(ckpt)
    result["first"] = measure(ckpt, root / "async-first.ckpt")
    result["second"] = measure(ckpt, root / "async-second.ckpt")
    result["steps"] = steps_during_a_save(ckpt, root / "async-during.ckpt")
    ckpt.close()
    del ckpt

    trim_heap()
    ckpt = make(state, root / "immediate")
    start = time.perf_counter()
    ckpt.fit_start()
    result["immediate"] = measure(ckpt, root / "async-immediate.ckpt")
    result["immediate"]["fit_start_seconds"] = time.perf_counter() - start - result["immediate"]["total_seconds"]
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
