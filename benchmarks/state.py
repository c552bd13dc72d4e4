"""The training state every local-disk measurement saves and restores: a small GPT-like transformer
with AdamW state after one optimizer step (so ``exp_avg`` and ``exp_avg_sq`` exist), sized so that
parameters + optimizer state come to the requested number of bytes (float32: 12 bytes per
parameter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from benchmarks.common import MiB


class TinyGPT(nn.Module):
    """Token and position embeddings, a pre-norm transformer encoder stack, an untied LM head."""

    def __init__(self, vocab: int, d_model: int, nhead: int, ff: int, layers: int, context: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=ff, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        hidden = self.tok(tokens) + self.pos(positions)
        return self.head(self.norm(self.blocks(hidden)))


@dataclass
class Shape:
    vocab: int
    d_model: int
    nhead: int
    ff: int
    layers: int
    context: int = 128


def shape_for(total_bytes: int) -> Shape:
    """Layers take about 80% of the parameters, embeddings and head the rest."""
    params = total_bytes // 12  # parameter + exp_avg + exp_avg_sq, float32
    if total_bytes < 4 * MiB:
        d, heads = 64, 2
    elif total_bytes >= 256 * MiB:
        d, heads = 768, 12
    elif total_bytes >= 64 * MiB:
        d, heads = 512, 8
    else:
        d, heads = 256, 4
    ff = 4 * d
    per_layer = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d
    layers = max(1, int(0.8 * params / per_layer))
    context = 128
    rest = params - layers * per_layer - context * d - 2 * d
    vocab = max(64, rest // (2 * d))
    return Shape(vocab=vocab, d_model=d, nhead=heads, ff=ff, layers=layers, context=context)


@dataclass
class TrainingState:
    model: TinyGPT
    optimizer: torch.optim.AdamW
    shape: Shape

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor a checkpoint of this state holds (parameters, buffers, optimizer state)."""
        found = list(self.model.state_dict().values())
        for state in self.optimizer.state.values():
            found += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return found

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def lightning_dict(self) -> dict[str, Any]:
        """The dict the baselines save: Lightning's layout with the same model and optimizer state."""
        return {
            "epoch": 0,
            "global_step": 1,
            "pytorch-lightning_version": "2.6.0",
            "state_dict": self.model.state_dict(),
            "loops": {},
            "callbacks": {},
            "optimizer_states": [self.optimizer.state_dict()],
            "lr_schedulers": [],
        }

    def flat_tensors(self) -> dict[str, torch.Tensor]:
        """Model and optimizer tensors under flat names, for safetensors."""
        flat = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        names = {id(p): n for n, p in self.model.named_parameters()}
        for param, state in self.optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    flat[f"optimizer.{names[id(param)]}.{key}"] = value
        return flat

    def fresh_gradients(self) -> None:
        """Zero gradients in memory of this process (for timing one optimizer step)."""
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)

    def privatize(self) -> None:
        """Give this (forked) process its own copy of the weights, so that writes into them time
        the write and not copy-on-write faults."""
        with torch.no_grad():
            for p in self.model.parameters():
                p.data = p.data.clone()
            for module in self.model.modules():
                for name, buf in list(module._buffers.items()):
                    if buf is not None:
                        module._buffers[name] = buf.clone()


def build_state(total_bytes: int, seed: int = 0) -> TrainingState:
    """The model and AdamW after one step on a random batch (gradients dropped afterwards)."""
    torch.manual_seed(seed)
    shape = shape_for(total_bytes)
    model = TinyGPT(shape.vocab, shape.d_model, shape.nhead, shape.ff, shape.layers, shape.context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(shape.vocab, (2, 16))
    logits = model(tokens)
    loss = nn.functional.cross_entropy(logits.reshape(-1, shape.vocab), tokens.reshape(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return TrainingState(model=model, optimizer=optimizer, shape=shape)


def build_tiny(seed: int = 0) -> TrainingState:
    """A tiny state (warm-ups: imports and first-call costs are paid before any timing)."""
    return build_state(MiB, seed)
