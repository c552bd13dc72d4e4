"""Checkpoint folders for the command-line tests: real runs, small and fast."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner, Result

from ckpthooks import Checkpointer, ModelCheckpoint
from ckpthooks.cli import main


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def run_json(*args: str, code: int = 0) -> Any:
    result = run_cli(*args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def train(
    root: Path | str,
    val_losses: Sequence[float],
    *,
    save_top_k: int = -1,
    save_last: bool = True,
    monitor: str | None = "val_loss",
    steps_per_epoch: int = 2,
    storage_options: dict[str, Any] | None = None,
) -> Checkpointer:
    """One epoch per value of ``val_losses``; ModelCheckpoint(monitor=...) keeps ``save_top_k``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = ModelCheckpoint(monitor=monitor, save_top_k=save_top_k, save_last=save_last)
    ckpt = Checkpointer(root, callbacks=[policy], storage_options=storage_options)
    ckpt.track(model=model, optimizers=optimizer)
    ckpt.fit_start()
    for epoch, loss in enumerate(val_losses):
        ckpt.epoch_start(epoch)
        for _ in range(steps_per_epoch):
            ckpt.step_end()
        ckpt.log("val_loss", loss)
        ckpt.epoch_end()
    ckpt.fit_end()
    ckpt.close()
    return ckpt


def names(records: list[dict[str, Any]]) -> list[str]:
    return [Path(record["path"]).name for record in records]
