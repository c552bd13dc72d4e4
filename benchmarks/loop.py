"""Per-step cost of the loop integration when no save is due, on a tiny model.

Per step: (time of the instrumented loop - time of a plain ``for _ in range(N)``) / N, each loop
with a no-op body, repeated; medians of the per-repetition differences.

    python -m benchmarks.loop --size quick --workdir /tmp/x --out /tmp/x/loop.json
"""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import progress, section_args, write_json


def plain(steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        pass
    return time.perf_counter() - start


def make_checkpointer(root: Path, kind: str) -> Any:
    from ckpthooks import Checkpointer, ModelCheckpoint
    from ckpthooks._preemption import DEFAULT_SIGNALS

    shutil.rmtree(root, ignore_errors=True)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    callbacks = [ModelCheckpoint(every_n_train_steps=10**9)] if kind == "every_n_train_steps" else None
    signals = None if kind == "no_preemption_signals" else DEFAULT_SIGNALS
    ckpt = Checkpointer(default_root_dir=root, callbacks=callbacks, preemption_signals=signals)
    ckpt.track(model=model, optimizers=optimizer)
    ckpt.fit_start()
    ckpt.epoch_start(0)
    return ckpt


def batches_loop(ckpt: Any, steps: int) -> float:
    ckpt.epoch_start(ckpt.current_epoch + 1)  # a fresh epoch: batches() would skip a finished one's
    start = time.perf_counter()
    for _ in ckpt.batches(range(steps)):
        pass
    return time.perf_counter() - start


def step_end_loop(ckpt: Any, steps: int) -> float:
    step_end = ckpt.step_end
    start = time.perf_counter()
    for _ in range(steps):
        step_end()
    return time.perf_counter() - start


#: (name, checkpointer kind, loop)
CASES: tuple[tuple[str, str, Callable[[Any, int], float]], ...] = (
    ("batches_default_policy", "default", batches_loop),
    ("batches_every_n_train_steps", "every_n_train_steps", batches_loop),
    ("step_end_default_policy", "default", step_end_loop),
    ("step_end_every_n_train_steps", "every_n_train_steps", step_end_loop),
    ("batches_no_preemption_signals", "no_preemption_signals", batches_loop),
)


def _distributed_rank(rank: int, port: int, steps: int, reps: int, root: str, out: str) -> None:
    """One rank of the torch.distributed measurement (gloo on loopback, 2 ranks)."""
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result: dict[str, list[float]] = {}
        for kind in ("default", "no_preemption_signals"):
            ckpt = make_checkpointer(Path(root) / f"{kind}-{rank}", kind)
            step_end_loop(ckpt, 100)  # warm-up
            samples = []
            for _ in range(reps):
                dist.barrier()
                base = plain(steps)
                samples.append((step_end_loop(ckpt, steps) - base) / steps * 1e6)
            result[kind] = samples
            ckpt.fit_end()
            ckpt.close()
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def distributed(root: Path, steps: int, reps: int) -> dict[str, Any]:
    """``step_end`` per step on 2 ranks (gloo over loopback): what a DDP loop pays per step."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root.mkdir(parents=True, exist_ok=True)
    out = root / "distributed.json"
    mp.spawn(_distributed_rank, args=(port, steps, reps, str(root), str(out)), nprocs=2)
    found: dict[str, Any] = json.loads(out.read_text())
    return found


def main() -> None:
    args = section_args(__doc__ or "")
    steps, reps = args.config["steps"], args.config["reps"]
    root = Path(args.workdir) / "loop"
    progress(f"loop overhead ({steps} steps x {reps})")
    checkpointers = {kind: make_checkpointer(root / kind, kind) for _, kind, _ in CASES}
    for _name, kind, loop in CASES:  # warm-up
        loop(checkpointers[kind], 1000)
    plain(1000)
    result: dict[str, Any] = {"steps": steps, "reps": reps, "plain_seconds": [], "cases": {}}
    for name, _, _ in CASES:
        result["cases"][name] = []
    gc.disable()
    try:
        for _ in range(reps):
            base = plain(steps)
            result["plain_seconds"].append(base)
            for name, kind, loop in CASES:
                seconds = loop(checkpointers[kind], steps)
                result["cases"][name].append({"seconds": seconds, "per_step_us": (seconds - base) / steps * 1e6})
    finally:
        gc.enable()
    for ckpt in checkpointers.values():
        ckpt.fit_end()
        ckpt.close()
    progress("loop overhead under torch.distributed (2 ranks, gloo)")
    dist_steps = 2000
    result["distributed"] = {"steps": dist_steps, "per_step_us": distributed(root / "distributed", dist_steps, reps)}
    shutil.rmtree(root, ignore_errors=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
