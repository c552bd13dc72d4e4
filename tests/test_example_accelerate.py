"""examples/accelerate_loop.py: an Accelerate loop on CPU resumes through ckpthooks (skipped without accelerate)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "accelerate_loop.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--cpu", *args], capture_output=True, text=True, timeout=240, check=False
    )


def test_accelerate_loop_resumes_the_prepared_objects(tmp_path: Path) -> None:
    first = run("--root", str(tmp_path), "--epochs", "1")
    assert first.returncode == 0, first.stderr
    assert "epoch 0:" in first.stdout and "resumed" not in first.stdout
    second = run("--root", str(tmp_path), "--epochs", "2")
    assert second.returncode == 0, second.stderr
    assert "epoch 0:" not in second.stdout and "epoch 1:" in second.stdout
    assert "resumed: restored model" in second.stdout
    for name in ("optimizers", "lr_schedulers"):
        assert name in second.stdout

    import torch

    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])  # the unwrapped model
