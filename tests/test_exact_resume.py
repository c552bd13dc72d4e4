"""An interrupted run ends bit-identical to an uninterrupted one.

A deterministic CPU run (dropout, shuffled DataLoader, AdamW, per-step LR scheduler) of 3 epochs
with checkpoints every 4 steps is killed with SIGKILL at several points — mid-epoch between saves,
right after a save, on the last batch of an epoch, after an epoch's end events — then resumed with
``ckpt_path="last"``; model, optimizer and scheduler state must equal the uninterrupted run's bit for
bit. 100 samples in batches of 8: 13 steps per epoch, 39 in all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("exact_resume_worker.py")


def run(root: Path, summary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), str(root), "--summary", str(summary), *args],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """Uninterrupted runs, by number of DataLoader workers (computed on first use)."""
    cache: dict[int, dict[str, Any]] = {}

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, workers: int) -> dict[str, Any]:
            folder = tmp_path_factory.mktemp(f"reference-{workers}")
            done = run(folder / "run", folder / "summary.json", "--workers", str(workers))
            assert done.returncode == 0, done.stderr
            self[workers] = json.loads((folder / "summary.json").read_text())
            return self[workers]

    return Lazy(cache)


KILLS = {
    "mid-epoch, between saves": (["--kill-at-step", "11"], 8),
    "right after a save": (["--kill-at-step", "20"], 20),
    "last batch of an epoch": (["--kill-at-step", "26"], 24),
    "after an epoch's end events": (["--kill-at-epoch-end", "1"], 24),
}
CASES = [(0, kill) for kill in KILLS] + [(2, "mid-epoch, between saves")]


@pytest.mark.slow
@pytest.mark.parametrize("workers, kill", CASES, ids=[f"workers={w}-{k}" for w, k in CASES])
def test_a_killed_and_resumed_run_is_bitwise_equal(
    references: dict[int, dict[str, Any]], workers: int, kill: str, tmp_path: Path
) -> None:
    expected = references[workers]
    kill_args, resume_step = KILLS[kill]
    killed = run(tmp_path / "run", tmp_path / "killed.json", "--workers", str(workers), *kill_args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run(tmp_path / "run", tmp_path / "resumed.json", "--workers", str(workers))
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((tmp_path / "resumed.json").read_text())
    assert got["resumed_from_step"] == resume_step
    assert got["global_step"] == expected["global_step"] == 39
    assert got["model"] == expected["model"]
    assert got["optimizer"] == expected["optimizer"]
    assert got["scheduler"] == expected["scheduler"]
