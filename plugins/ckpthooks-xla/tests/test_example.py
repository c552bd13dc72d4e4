"""``examples/xla_loop.py`` runs on 2 CPU ordinals, resumes from "last", and matches an uninterrupted run.

Skipped where torch_xla is not installed; ``make xla-test`` runs it in ``.venv-xla``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed here; the XLA lane runs this (make xla-test)")

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "xla_loop.py"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def run_example(root: Path, epochs: int, summary: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTHOOKS_")}
    env.update(PJRT_DEVICE="CPU", CPU_NUM_DEVICES="2", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, str(EXAMPLE), "--root", str(root), "--epochs", str(epochs), "--summary", str(summary)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    return result.stdout


def test_the_xla_example_resumes_on_every_ordinal_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    first = run_example(tmp_path / "a", 2, tmp_path / "a2.json")
    assert "epoch 1:" in first and "resumed" not in first
    second = run_example(tmp_path / "a", 4, tmp_path / "a4.json")
    assert "epoch 0:" not in second and "epoch 2:" in second
    for ordinal in (0, 1):
        assert f"ordinal {ordinal} resumed: restored model" in second
    reference = run_example(tmp_path / "b", 4, tmp_path / "b.json")
    assert "resumed" not in reference
    resumed, uninterrupted = (json.loads((tmp_path / name).read_text()) for name in ("a4.json", "b.json"))
    assert resumed == uninterrupted  # bit-identical weights on the master ordinal
    assert resumed["global_step"] == 32
