"""A rank of the torchrun preemption test (started by tests/test_preempted_command.py through
torchrun; not collected by pytest).

Usage: ``torchrun --nproc-per-node 2 tests/_preempt_torchrun_worker.py ROOT STEPS``. Trains a tiny
model for STEPS steps (a few milliseconds each) with checkpoints under ROOT; rank 0 writes
``ROOT/training`` once training is under way, so that the test knows when to send SIGTERM.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist

from ckpthooks import Checkpointer


def main() -> int:
    root, steps = Path(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo")
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        ckpt = Checkpointer(root).track(model=model, optimizers=optimizer)

        @ckpt.loop(max_epochs=1)
        def epoch(index: int) -> None:
            for step in ckpt.batches(range(steps)):
                model(torch.randn(8, 4)).pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad()
                time.sleep(0.005)
                if step == 3 and dist.get_rank() == 0:
                    (root / "training").write_text("")

        epoch()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
