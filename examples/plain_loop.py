"""A plain PyTorch training loop made resumable with ckpthooks.

    python examples/plain_loop.py --root runs/plain --epochs 5

Run it twice: the second run restores from the newest committed checkpoint ("last") and continues.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpthooks import Checkpointer, HyperparametersMixin, ModelCheckpoint


class Regressor(HyperparametersMixin, nn.Module):
    def __init__(self, in_dim: int = 16, hidden: int = 32, lr: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()  # recorded in every checkpoint, used by load_from_checkpoint
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_loaders(seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)
    y = x[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(512, 1, generator=g)
    train = DataLoader(TensorDataset(x[:448], y[:448]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[448:], y[448:]), batch_size=64)
    return train, val


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="runs/plain")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ckpt-path", default="last", help='"last", "best", a path, or "none"')
    parser.add_argument("--epoch-delay", type=float, default=0.0, help="seconds to sleep per epoch")
    parser.add_argument("--summary", help="write the final loss and a digest of the weights here (JSON)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.AdamW(model.parameters(), lr=model.hparams.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    train_loader, val_loader = make_loaders()

    ckpt = Checkpointer(
        default_root_dir=args.root,
        callbacks=[
            # the two best epochs by validation loss, and last.ckpt
            ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True),
            # plus the latest of a checkpoint every 5 steps, so an interrupted epoch is not lost
            ModelCheckpoint(dirpath=f"{args.root}/steps", filename="{step}", every_n_train_steps=5),
        ],
    )
    ckpt.track(model=model, optimizers=optimizer, lr_schedulers=scheduler)

    started = False

    @ckpt.loop(max_epochs=args.epochs, ckpt_path=None if args.ckpt_path == "none" else args.ckpt_path)
    def train_one_epoch(epoch: int) -> float:
        nonlocal started
        if not started:  # the loop has restored by now: say from where, before training goes on
            started = True
            if ckpt.resumed_from:
                print(
                    f"resuming from {ckpt.resumed_from}: epoch {epoch}, {ckpt.progress.batch_idx} of its "
                    f"batches done, global step {ckpt.global_step}",
                    flush=True,
                )
        model.train()
        for x, y in ckpt.batches(train_loader):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(nn.functional.mse_loss(model(x), y).item() for x, y in val_loader) / len(val_loader)
        ckpt.log("val_loss", val_loss)
        print(f"epoch {epoch}: val_loss={val_loss:.4f} (global step {ckpt.global_step})", flush=True)
        if args.epoch_delay:
            import time

            time.sleep(args.epoch_delay)
        return val_loss

    result = train_one_epoch()
    if result.restore is not None:
        print(f"resumed: {result.restore.summary()}")
    policy = ckpt.callbacks[0]
    assert isinstance(policy, ModelCheckpoint)
    print(f"best checkpoint: {policy.best_model_path} (val_loss={policy.best_model_score})")
    summary = {
        "val_loss": float(result.outputs[-1]) if result.outputs else float("nan"),
        "global_step": ckpt.global_step,
        "weights_sha256": weights_digest(model),
    }
    if args.summary:
        with open(args.summary, "w") as handle:
            json.dump(summary, handle)
    return summary


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter's exact bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(raw_bytes(tensor.detach()))
    return digest.hexdigest()


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The exact bytes of a CPU tensor (without NumPy, which torch does not require)."""
    tensor = tensor.cpu().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
