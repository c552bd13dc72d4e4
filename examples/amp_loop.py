"""Mixed precision on CPU: autocast to bfloat16 and a GradScaler, both restored on resume.

    python examples/amp_loop.py --root runs/amp --epochs 3

On a CUDA machine use device="cuda" and float16; the checkpointing code is the same. The scaler is
tracked like any other state and written under Lightning's ``MixedPrecision`` key.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ckpthooks import Checkpointer


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="runs/amp")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = "cpu"
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    data = [(torch.randn(16, 32), torch.randn(16, 1)) for _ in range(8)]

    ckpt = Checkpointer(default_root_dir=args.root)
    ckpt.track(model=model, optimizers=optimizer, scaler=scaler)

    @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")
    def train_one_epoch(epoch: int) -> float:
        total = 0.0
        for x, y in ckpt.batches(data):
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(model(x).float(), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.item()
        ckpt.log("train_loss", total / len(data))
        print(f"epoch {epoch}: train_loss={total / len(data):.4f} scale={scaler.get_scale():.0f}", flush=True)
        return total / len(data)

    result = train_one_epoch()
    if result.restore is not None:
        print(f"resumed: {result.restore.summary()}")
    return {"scale": float(scaler.get_scale()), "global_step": ckpt.global_step}


if __name__ == "__main__":
    main()
