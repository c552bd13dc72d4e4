"""Small models and loops the tests share."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ckpthooks import Callback, HyperparametersMixin


class TinyNet(HyperparametersMixin, nn.Module):
    """A two-layer net with dropout and saved hyperparameters."""

    def __init__(self, in_dim: int = 4, hidden: int = 8, out_dim: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.l1 = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.l2 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.drop(torch.relu(self.l1(x))))


class CountingCallback(Callback):
    """A stateful callback that counts the batches it has seen."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, checkpointer: Any) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = state_dict["batches"]


class StatefulDataModule:
    """A datamodule with its own state, like Lightning's stateful datamodules."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.epochs_served = 0

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epochs_served": self.epochs_served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state["seed"]
        self.epochs_served = state["epochs_served"]


def make_data(batches: int = 4, batch_size: int = 8, in_dim: int = 4, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, in_dim, generator=generator), torch.randn(batch_size, 1, generator=generator))
        for _ in range(batches)
    ]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    x, y = batch
    loss = nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)
