"""Sharded training (FSDP2's ``fully_shard``) with sharded checkpoints from the ckpthooks-dcp plugin.

    pip install ./plugins/ckpthooks-dcp    # from a clone of the ckpthooks repository
    torchrun --nproc-per-node 2 examples/sharded_fsdp2.py --root runs/fsdp2 --epochs 2
    torchrun --nproc-per-node 2 examples/sharded_fsdp2.py --root runs/fsdp2 --epochs 4   # resumes
    python examples/sharded_fsdp2.py --root runs/fsdp2 --consolidate runs/fsdp2/model.pt

Every rank holds a shard of each weight and of the optimizer state, and writes only its shards:
each checkpoint is a folder written with torch.distributed.checkpoint and committed by rank 0 once
every rank finished. Loading reshards: the same checkpoint resumes on any number of ranks, and
``--consolidate`` loads it in one plain process (no process group, an unsharded model) and writes
the whole weights with torch.save. Runs on CPU with gloo. --quick trains on less data (for tests).
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
from typing import Any

import torch
import torch.distributed as dist
from ckpthooks_dcp import DCPCheckpointIO
from torch import nn

from ckpthooks import Checkpointer, ModelCheckpoint, rank_zero_only


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def make_checkpointer(root: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> Checkpointer:
    ckpt = Checkpointer(
        default_root_dir=root,
        callbacks=[ModelCheckpoint(every_n_train_steps=4, save_top_k=1, save_last=True)],
        checkpoint_io=DCPCheckpointIO(),  # every rank writes its shards; rank 0 commits the folder
    )
    return ckpt.track(model=model, optimizers=optimizer)


def digest(state: dict[str, torch.Tensor]) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        hasher.update(name.encode())
        hasher.update(raw_bytes(tensor.detach()))
    return hasher.hexdigest()


@rank_zero_only
def say(message: str) -> None:
    print(message, flush=True)


def train(args: argparse.Namespace) -> None:
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", timeout=timedelta(minutes=5))
    try:
        model = build_model()
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)  # each rank keeps 1/world_size of the layer's rows
        fully_shard(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ckpt = make_checkpointer(args.root, model, optimizer)
        generator = torch.Generator().manual_seed(dist.get_rank())  # each rank its own data
        batches = [(torch.randn(16, 16, generator=generator),) for _ in range(4 if args.quick else 32)]

        @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")  # resumes on any number of ranks
        def train_one_epoch(epoch: int) -> None:
            losses = []
            for (x,) in ckpt.batches(batches):  # after a mid-epoch resume: only the batches left
                y = x[:, :4].sum(dim=1, keepdim=True)
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
            if losses:
                say(f"epoch {epoch}: loss={losses[-1]:.4f} (global step {ckpt.global_step})")

        result = train_one_epoch()
        if result.restore is not None:
            say(f"resumed: {result.restore.summary()}")
        # gathering the whole weights is a collective: every rank calls full_tensor()
        whole = {name: tensor.full_tensor() for name, tensor in model.state_dict().items()}
        say(f"weights sha256 {digest(whole)}")
        if args.summary and dist.get_rank() == 0:
            with open(args.summary, "w") as handle:
                json.dump({"global_step": ckpt.global_step, "weights_sha256": digest(whole)}, handle)
        # collect garbage that holds process-group resources while the group still exists, and
        # let the last collective's messages land: gloo may abort a process otherwise
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def consolidate(args: argparse.Namespace) -> None:
    """One process, no process group: load the newest sharded checkpoint into a plain model."""
    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt = make_checkpointer(args.root, model, optimizer)
    report = ckpt.restore("last", must_exist=True)
    assert report is not None
    state: dict[str, Any] = model.state_dict()
    torch.save(state, args.consolidate)
    print(f"loaded {report.path} (global step {report.global_step}) into one process; wrote {args.consolidate}")
    print(f"weights sha256 {digest(state)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/fsdp2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="less data, for tests")
    parser.add_argument("--summary", help="rank 0 writes the final step and a digest of the weights here (JSON)")
    parser.add_argument("--consolidate", metavar="FILE", help="load the last checkpoint in one process, save FILE")
    args = parser.parse_args(argv)
    if args.consolidate:
        consolidate(args)
    elif "RANK" not in os.environ:
        parser.error("run the training under torchrun (see above), or pass --consolidate FILE")
    else:
        train(args)


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The exact bytes of a CPU tensor (without NumPy, which torch does not require)."""
    tensor = tensor.cpu().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
