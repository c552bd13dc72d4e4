"""A plain training loop on XLA devices (TPU, or the CPU for trying it out), made resumable with ckpthooks.

    pip install . ./plugins/ckpthooks-xla torch-xla    # in a clone of ckpthooks; torch-xla matching your torch
    PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 python examples/xla_loop.py --root runs/xla --epochs 2
    PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 python examples/xla_loop.py --root runs/xla --epochs 4   # resumes

On a TPU VM leave out both variables. ``xmp.spawn`` runs ``train`` once per device (ordinal); every
ordinal makes the same ckpthooks calls, the ckpthooks-xla plugin makes the master ordinal the only
writer, and XLA tensors reach the file as CPU tensors. Run it twice: the second run restores "last"
on every ordinal, onto its own device, and continues.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import sys
import threading
from typing import Any

import torch
import torch_xla
import torch_xla.core.xla_model as xm
import torch_xla.distributed.xla_multiprocessing as xmp
import torch_xla.runtime as xr
from torch import nn

from ckpthooks import Checkpointer, ModelCheckpoint

#: On the CPU, xmp.spawn runs the ordinals as threads of one process, and they share torch's global
#: random generator: seeding and drawing from it must not interleave.
_init_lock = threading.Lock()


def make_data(ordinal: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This ordinal's shard of a small regression set, in batches of 16."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = x[:, :2].sum(dim=1, keepdim=True)
    x, y = x[ordinal::world], y[ordinal::world]
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, len(x), 16)]


def train(index: int, args: argparse.Namespace) -> None:
    device = torch_xla.device()
    ordinal, world = xr.global_ordinal(), xr.world_size()
    with _init_lock:
        torch.manual_seed(0)  # the same initial weights on every ordinal
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = make_data(ordinal, world)

    ckpt = Checkpointer(
        default_root_dir=args.root,
        callbacks=[ModelCheckpoint(monitor="loss", save_top_k=2, save_last=True)],
        preemption_signals=None,  # xmp.spawn runs train() in a worker thread, where signals cannot be handled
    )
    ckpt.track(model=model, optimizers=optimizer)

    @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")  # every ordinal restores the file rank 0 chose
    def one_epoch(epoch: int) -> float:
        total = torch.zeros((), device=device)
        for x, y in ckpt.batches(batches):
            loss = nn.functional.mse_loss(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            if xr.device_type() == "CPU":
                # torch_xla's collectives between the device threads of one CPU process are not
                # reliable (torch_xla 2.9): the CPU replicas train without averaging gradients
                optimizer.step()
            else:
                xm.optimizer_step(optimizer)  # all-reduce the gradients across TPU cores, then step
            total += loss.detach()
            torch_xla.sync()
        mean = float(total.cpu()) / len(batches)
        ckpt.log("loss", mean)  # every ordinal logs; the master ordinal's value names and ranks files
        if xm.is_master_ordinal(local=False):
            print(f"epoch {epoch}: loss={mean:.5f} (global step {ckpt.global_step})", flush=True)
        return mean

    result = one_epoch()
    if result.restore is not None:
        sys.stdout.write(f"ordinal {ordinal} resumed: {result.restore.summary()}\n")  # one write per line
        sys.stdout.flush()
    if args.summary and xm.is_master_ordinal(local=False):
        summary: dict[str, Any] = {"global_step": ckpt.global_step, "weights_sha256": weights_digest(model)}
        with open(args.summary, "w") as handle:
            json.dump(summary, handle)


def weights_digest(model: nn.Module) -> str:
    """A digest of every parameter's exact bytes (copied to the CPU)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(raw_bytes(tensor.detach().cpu()))
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="runs/xla")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--summary", help="the master ordinal writes its global step and a weights digest here")
    args = parser.parse_args(argv)
    xmp.spawn(train, args=(args,))


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """The exact bytes of a CPU tensor (without NumPy, which torch does not require)."""
    tensor = tensor.cpu().contiguous()
    return ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size())


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
