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


def make_data(
    batches: int = 4, batch_size: int = 8, in_dim: int = 4, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
    return loss.item()


class StatefulTensorHolder:
    """A non-module object with its own state (an EMA-like copy of weights plus a counter)."""

    def __init__(self, size: int = 3, fill: float = 0.0) -> None:
        self.value = torch.full((size,), fill)
        self.updates = 0

    def update(self, amount: float) -> None:
        self.value += amount
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = state["value"].clone()
        self.updates = state["updates"]


def assert_state_equal(actual: Any, expected: Any, where: str = "state") -> None:
    """Recursively compare nested dicts/lists/tuples of plain values and tensors exactly."""
    if isinstance(expected, torch.Tensor):
        kind = type(actual).__name__
        assert isinstance(actual, torch.Tensor), f"{where}: expected a tensor, got {kind}"
        assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
        assert torch.equal(actual, expected), f"{where}: tensors differ"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a dict, got {type(actual).__name__}"
        got, want = sorted(map(str, actual)), sorted(map(str, expected))
        assert set(actual) == set(expected), f"{where}: keys {got} != {want}"
        for key in expected:
            assert_state_equal(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        kind = type(actual).__name__
        assert isinstance(actual, (list, tuple)), f"{where}: expected a sequence, got {kind}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_state_equal(a, e, f"{where}[{index}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"
