"""A small plain training loop that checkpoints into sqlblob:// (run as a script to be killed)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch

from ckpthooks import Checkpointer, ModelCheckpoint

#: the validation loss logged at the end of each epoch (what top-k ranks by)
VAL_LOSSES = [0.5, 0.2, 0.4, 0.1, 0.3]
STEPS_PER_EPOCH = 3


def make(root: str, options: dict[str, str]) -> tuple[Checkpointer, torch.nn.Module]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    policy = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    ckpt = Checkpointer(root, callbacks=[policy], storage_options=options, preemption_signals=None)
    ckpt.track(model=model, optimizers=optimizer)
    return ckpt, model


def train(
    root: str,
    options: dict[str, str],
    *,
    ckpt_path: str | None = "last",
    kill_at_epoch: int | None = None,
    snapshots: dict[int, dict[str, Any]] | None = None,
) -> tuple[Checkpointer, torch.nn.Module]:
    """Train every epoch of :data:`VAL_LOSSES`, resuming from ``ckpt_path``. ``kill_at_epoch``:
    SIGKILL this process when that epoch starts (the ones before it are committed). ``snapshots``
    receives the weights at the end of each epoch run here."""
    ckpt, model = make(root, options)
    optimizer = ckpt.optimizers[0]

    @ckpt.loop(max_epochs=len(VAL_LOSSES), ckpt_path=ckpt_path)
    def epoch(number: int) -> None:
        if number == kill_at_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
        for step in range(STEPS_PER_EPOCH):
            generator = torch.Generator().manual_seed(number * 100 + step)
            x, y = torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ckpt.step_end()
            ckpt.log("train_loss", loss)
        ckpt.log("val_loss", VAL_LOSSES[number])
        if snapshots is not None:
            snapshots[number] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    epoch()
    ckpt.close()
    return ckpt, model


if __name__ == "__main__":
    train(sys.argv[1], {"database": sys.argv[2]}, ckpt_path=None, kill_at_epoch=int(sys.argv[3]))
