"""An Accelerate training loop with ckpthooks checkpointing, on CPU or GPUs alike.

    pip install accelerate
    python examples/accelerate_loop.py --root runs/accelerate --epochs 3
    accelerate launch examples/accelerate_loop.py --root runs/accelerate   # several processes

Accelerate prepares the model, optimizer, scheduler and data loader; ckpthooks tracks the prepared
objects (the model unwrapped, so the file's state_dict keys have no ``module.`` prefix and
Lightning or a plain loop can load it) and saves them with ModelCheckpoint's policies instead of
``accelerator.save_state``: crash-safe commits, top-k by a metric, ``ckpt_path="last"``. Run it
twice: the second run resumes where the first stopped.
"""

from __future__ import annotations

import argparse
import logging

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpthooks import Checkpointer, ModelCheckpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/accelerate")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", default=not torch.cuda.is_available())
    args = parser.parse_args(argv)

    accelerator = Accelerator(cpu=args.cpu)
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x[:, :2].sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    # every process builds the checkpointer; only global rank 0 writes (ckpthooks asks
    # torch.distributed, which accelerate initializes when it launches several processes)
    ckpt = Checkpointer(
        default_root_dir=args.root,
        callbacks=[ModelCheckpoint(monitor="train_loss", save_top_k=2, save_last=True)],
    )
    ckpt.track(model=accelerator.unwrap_model(model), optimizers=optimizer, lr_schedulers=scheduler)

    @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")
    def train(epoch: int) -> float:
        model.train()
        total = 0.0
        for inputs, targets in ckpt.batches(loader):
            loss = nn.functional.mse_loss(model(inputs), targets)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            total += loss.item()
        scheduler.step()
        mean = accelerator.reduce(torch.tensor(total / len(loader), device=accelerator.device), "mean").item()
        ckpt.log("train_loss", mean)
        accelerator.print(f"epoch {epoch}: train_loss={mean:.4f}")
        return mean

    result = train()
    if result.restore is not None:
        accelerator.print(f"resumed: {result.restore.summary()}")
    ckpt.close()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
