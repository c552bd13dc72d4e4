"""A deterministic training run for the exact-resume tests (run as a script, not collected).

    python tests/exact_resume_worker.py ROOT --summary OUT.json [--kill-at-step K] [--workers W]

Model with dropout, shuffled DataLoader, AdamW, a per-step LR scheduler, checkpoints every N steps,
``ckpt_path="last"``. With ``--kill-at-step K`` the process SIGKILLs itself right after step K's
callbacks (so after a save when K is a multiple of N). The summary holds digests of the final model,
optimizer and scheduler state: equal digests mean bitwise-equal state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpthooks import Callback, Checkpointer, ModelCheckpoint


class Killer(Callback):
    """Dies right after step ``step``'s events: at its batch end, or, when the step saves (a
    multiple of ``every``), once that checkpoint is committed (policies run after every other
    callback, as in Lightning, so the batch end comes before the save)."""

    def __init__(self, step: int | None, at_epoch_end: int | None, every: int) -> None:
        self.step = step
        self.at_epoch_end = at_epoch_end
        self.every = every

    def on_train_batch_end(self, checkpointer: Any) -> None:
        if checkpointer.global_step == self.step and self.step % self.every:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint_committed(self, checkpointer: Any, path: str, manifest: Any) -> None:
        if manifest.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_end(self, checkpointer: Any) -> None:
        if checkpointer.current_epoch == self.at_epoch_end:
            os.kill(os.getpid(), signal.SIGKILL)


def digest(obj: Any) -> str:
    hasher = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            hasher.update(str(value.dtype).encode())
            hasher.update(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                hasher.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        else:
            hasher.update(repr(value).encode())

    feed(obj)
    return hasher.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--summary", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-at-epoch-end", type=int)
    parser.add_argument("--signals", default="TERM", help="preemption signals, e.g. TERM,USR1")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step")
    args = parser.parse_args()
    signals = [getattr(signal, f"SIG{name}") for name in args.signals.split(",") if name]

    torch.manual_seed(0)
    data = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    target = data.sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(data, target), batch_size=8, shuffle=True, num_workers=args.workers)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.9)

    policy = ModelCheckpoint(filename="{step}", every_n_train_steps=args.every)
    ckpt = Checkpointer(
        args.root,
        callbacks=[policy, Killer(args.kill_at_step, args.kill_at_epoch_end, args.every)],
        preemption_signals=signals,
    )
    ckpt.track(model=model, optimizers=optimizer, lr_schedulers=scheduler)

    @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")
    def train_one_epoch(epoch: int) -> None:
        model.train()
        for x, y in ckpt.batches(loader):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            print(f"step {ckpt.global_step}", flush=True)  # counts this batch once its optimizer stepped
            if args.step_delay:
                time.sleep(args.step_delay)

    result = train_one_epoch()
    summary = {
        "global_step": ckpt.global_step,
        "resumed_from_step": None if result.restore is None else result.restore.global_step,
        "model": digest(model.state_dict()),
        "optimizer": digest(optimizer.state_dict()),
        "scheduler": digest(scheduler.state_dict()),
    }
    Path(args.summary).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
