"""One rank of the two-node resume test (started by tests/test_two_nodes.py, not collected by pytest).

Usage: ``python tests/_two_node_worker.py RANK WORLD_SIZE PORT ROOT STEP OUT``. Each rank plays a
node of its own: the test starts it in a mount namespace of its own where ``ROOT`` is that node's
local disk (or, without mount namespaces, passes each rank a folder of its own). With ``STEP`` above
0 the node's disk first gets a committed checkpoint at that global step, written by this process
alone before the process group exists; with ``DAMAGED_STEP`` in the environment rank 0 also writes
one at that step and damages its bytes. Then the ranks join a gloo group on 127.0.0.1:PORT and
resume with ``ckpt_path="last"``; the outcome goes to ``OUT`` as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist

from ckpthooks import Checkpointer
from tests.helpers import TinyNet


def main() -> int:
    rank_text, world_text, port, root_text, step_text, out_text = sys.argv[1:7]
    rank, world_size, root, step = int(rank_text), int(world_text), Path(root_text), int(step_text)
    if step > 0:  # this node's disk holds a checkpoint from an earlier run
        torch.manual_seed(step)
        earlier = Checkpointer(root, enable_checkpointing=False, preemption_signals=None).track(model=TinyNet())
        earlier.progress.global_step = step
        earlier.save_checkpoint(root / f"step={step}.ckpt")
    damaged = int(os.environ.get("DAMAGED_STEP", "0"))
    if damaged and rank == 0:  # a newer checkpoint whose bytes were damaged after its commit
        later = Checkpointer(root, enable_checkpointing=False, preemption_signals=None).track(model=TinyNet())
        later.progress.global_step = damaged
        later.save_checkpoint(root / f"step={damaged}.ckpt")
        with open(root / f"step={damaged}.ckpt", "r+b") as handle:
            handle.seek(100)
            handle.write(b"\xff" * 16)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank_text, WORLD_SIZE=world_text)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=30))
    result: dict[str, Any]
    try:
        ckpt = Checkpointer(root, enable_checkpointing=False, preemption_signals=None).track(model=TinyNet())
        started = time.monotonic()
        try:
            report = ckpt.restore("last")
        except Exception as exc:
            result = {"raised": type(exc).__name__, "message": str(exc)}
        else:
            result = {"raised": None, "restored_from": None if report is None else report.path,
                      "step": ckpt.progress.global_step}  # fmt: skip
        result["seconds"] = time.monotonic() - started
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out_text).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
