"""Distributed data parallel (DDP) training made resumable with ckpthooks, launched by torchrun.

    torchrun --nproc-per-node 2 examples/ddp_torchrun.py --root runs/ddp --epochs 3
    torchrun --nproc-per-node 2 examples/ddp_torchrun.py --root runs/ddp --epochs 5   # resumes

Runs on CPU with the gloo backend (pass --backend nccl on GPUs). Every rank runs this same script:
every rank makes the same ckpthooks calls, global rank 0 alone writes files, and the ranks agree on
everything a save decides (see docs/distributed.md). --quick trains on less data (the tests use it).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ckpthooks import Checkpointer, ModelCheckpoint, rank_zero_only


@rank_zero_only
def say(message: str) -> None:
    print(message, flush=True)


def make_data(samples: int) -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(0)  # the same data on every rank
    x = torch.randn(samples, 16, generator=generator)
    y = x[:, :4].sum(dim=1, keepdim=True) + 0.1 * torch.randn(samples, 1, generator=generator)
    cut = samples * 7 // 8
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="runs/ddp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--quick", action="store_true", help="less data, for tests")
    parser.add_argument("--summary", help="rank 0 writes the final step and a digest of the weights here (JSON)")
    args = parser.parse_args(argv)

    # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. The timeout bounds how long a rank
    # waits for the others in any collective, ckpthooks' agreements included (docs/distributed.md).
    dist.init_process_group(args.backend, timeout=timedelta(minutes=5))
    try:
        train(args)
        # free the DDP wrapper (it sits in reference cycles) while its process group still exists,
        # and let the last collective's messages land: gloo may abort a process otherwise
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train(args: argparse.Namespace) -> None:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    ddp_model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    train_set, val_set = make_data(256 if args.quick else 2048)
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train_set, batch_size=16, sampler=sampler)

    ckpt = Checkpointer(
        default_root_dir=args.root,
        callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)],
    )
    # track the module inside DDP: its state_dict has no "module." prefix, so the files also load
    # into a plain, unwrapped model
    ckpt.track(model=model, optimizers=optimizer, lr_schedulers=scheduler)

    @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")  # every rank resumes what rank 0 finds
    def train_one_epoch(epoch: int) -> float:
        sampler.set_epoch(epoch)  # a different shuffle per epoch, the same on a resume
        ddp_model.train()
        for x, y in ckpt.batches(loader):
            loss = nn.functional.mse_loss(ddp_model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        # a global validation loss: every rank computes it on its half, then the ranks average it.
        # ModelCheckpoint uses rank 0's logged value on every rank; reducing first makes it global.
        ddp_model.eval()
        with torch.no_grad():
            part = val_set.tensors[0][rank::world_size], val_set.tensors[1][rank::world_size]
            val_loss = nn.functional.mse_loss(ddp_model(part[0]), part[1]).reshape(1)
        dist.all_reduce(val_loss)
        ckpt.log("val_loss", val_loss / world_size)
        say(f"epoch {epoch}: val_loss={float(val_loss) / world_size:.4f} (global step {ckpt.global_step})")
        return float(val_loss) / world_size

    result = train_one_epoch()
    if result.restore is not None:
        say(f"resumed: {result.restore.summary()}")

    # a manual save: on every rank, with the same path (rank 0 writes, every rank learns the outcome)
    final = os.path.join(args.root, "final.ckpt")
    ckpt.save_checkpoint(final)
    say(f"saved {final} at global step {ckpt.global_step}")
    if args.summary and rank == 0:
        with open(args.summary, "w") as handle:
            json.dump({"global_step": ckpt.global_step, "weights_sha256": digest(model)}, handle)


def digest(model: nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(raw_bytes(tensor.detach()))
    return hasher.hexdigest()


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The exact bytes of a CPU tensor (without NumPy, which torch does not require)."""
    tensor = tensor.cpu().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
