"""One rank of the DDP preemption test (run by tests/test_preemption.py; not collected).

    python tests/preempt_ddp_worker.py RANK WORLD PORT ROOT

Trains slowly (so a signal can arrive mid-run) and prints ``rank R step N`` lines; prints
``rank R done`` if it ever finishes.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist
from torch import nn

from ckpthooks import Checkpointer, ModelCheckpoint


def main() -> int:
    rank, world, port, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        ckpt = Checkpointer(root, callbacks=[ModelCheckpoint(every_n_epochs=100)]).track(model=model)

        def epoch_fn(epoch: int) -> None:
            for _ in ckpt.batches(range(1000)):
                print(f"rank {rank} step {ckpt.global_step + 1}", flush=True)
                time.sleep(0.05)

        ckpt.fit(epoch_fn, max_epochs=1)
        print(f"rank {rank} done", flush=True)
    finally:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
