"""An interrupted run ends bit-identical to an uninterrupted one.

A deterministic CPU run (dropout, shuffled DataLoader, AdamW, per-step LR scheduler) of 3 epochs
with checkpoints every 4 steps is killed with SIGKILL at several points — mid-epoch between saves,
right after a save, on the last batch of an epoch, after an epoch's end events — then resumed with
``ckpt_path="last"``; model, optimizer and scheduler state must equal the uninterrupted run's bit for
bit. 100 samples in batches of 8: 13 steps per epoch, 39 in all.

The common loop, with validation inside it (``--val-every 3``, as Lightning's
``val_check_interval=3``): after batches 3, 6, 9 and 12 of every epoch, once the optimizer and the
scheduler stepped, the model is evaluated on a fixed held-out set, ``val_loss`` is logged and
``validation_end()`` called. Beside the step policy (every 4 steps, top 1, ``checkpoints/``) a
monitor policy keeps the 2 best by ``val_loss`` (``best/``). At lr 0.1 the validation loss goes up
and down, so top-k saves, refuses and prunes (the reference fixture checks the outcome):

    validation at step  3   6   9   12  16  19  22  25  29  32  35  38
    monitor saves       3   6   9   12  16  -   -   -   -   32  35  38
    step saves at 4, 8, 12, 16, 20, 24, 28, 32, 36; 12, 16 and 32 save twice, the validation
    first (inside the batch), the step policy at the batch's end; "last" is then the step's file

Kill points, and the step the resumed run restores (from which folder):

- mid-epoch between saves: step 30, after the refused validation at 29 -> 28 (checkpoints);
- right after a validation save: step 9, a save taken inside the batch -> 9 (best);
- right after the validation save of a step whose step save has not happened yet: step 12 -> 12
  (best); the epoch's last validation is behind the resume point;
- right after a step save: step 20 -> 20 (checkpoints);
- during a validation, after ``ckpt.log`` and before ``validation_end()``: step 35, whose save would
  displace the epoch-0 file -> 32 (checkpoints, the newer of step 32's two files);
- after an epoch's end events (killed at the next epoch's start): epoch 1 -> 24 (checkpoints;
  nothing saves at an epoch's end here), and epoch 0 -> 12 (checkpoints), where, again, the epoch's
  last validation is behind the resume point.

Besides the digests, what the resumed run must reproduce: the monitor policy's
``best_model_score`` and ``best_model_path``, the ``*.ckpt`` files kept in each folder, and the
events a stateful callback saw (every batch end, validation end and epoch end once, nothing added),
restored from the checkpoint and continued, as a callback that averages the weights at every batch
end would be. The one file that may differ is the one the run resumed from: the run that resumed
from it never deletes it (Lightning's guard too), so it stays even where the uninterrupted run
pruned it.
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
            summary: dict[str, Any] = json.loads((folder / "summary.json").read_text())
            self[workers] = summary
            return summary

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


VALIDATION = ["--val-every", "3", "--lr", "0.1"]


@pytest.fixture(scope="module")
def validation_reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run with validation inside the loop."""
    folder = tmp_path_factory.mktemp("reference-validation")
    done = run(folder / "run", folder / "summary.json", *VALIDATION)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads((folder / "summary.json").read_text())
    # what the cases below were worked out from: a change here changes their resume points
    assert summary["best_model_path"] == "step=38-val_loss=0.2467.ckpt", summary
    assert summary["kept"] == {
        "checkpoints": ["step=36.ckpt"],
        "best": ["step=35-val_loss=0.4222.ckpt", "step=38-val_loss=0.2467.ckpt"],
    }, summary
    return summary


#: case -> (kill arguments, last step the killed run printed, step resumed from, folder resumed from)
VALIDATION_KILLS = {
    "mid-epoch, between saves": (["--kill-at-step", "30"], 30, 28, "checkpoints"),
    "right after a validation save": (["--kill-at-step", "9"], 9, 9, "best"),
    "right after a validation save, before that step's step save": (["--kill-at-step", "12"], 12, 12, "best"),
    "right after a step save": (["--kill-at-step", "20"], 20, 20, "checkpoints"),
    "during a validation, before validation_end": (["--kill-in-validation", "35"], 35, 32, "checkpoints"),
    "after epoch 1's end events": (["--kill-at-epoch-end", "1"], 26, 24, "checkpoints"),
    "after epoch 0's end, resumed past its last validation": (["--kill-at-epoch-end", "0"], 13, 12, "checkpoints"),
}


@pytest.mark.slow
@pytest.mark.parametrize("kill", list(VALIDATION_KILLS))
def test_a_killed_and_resumed_run_with_validation_in_the_loop_is_bitwise_equal(
    validation_reference: dict[str, Any], kill: str, tmp_path: Path
) -> None:
    expected = validation_reference
    kill_args, last_step, resume_step, resume_folder = VALIDATION_KILLS[kill]
    killed = run(tmp_path / "run", tmp_path / "killed.json", *VALIDATION, *kill_args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    steps = [int(line.split()[1]) for line in killed.stdout.splitlines() if line.startswith("step ")]
    assert steps[-1] == last_step, killed.stdout
    resumed = run(tmp_path / "run", tmp_path / "resumed.json", *VALIDATION)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads((tmp_path / "resumed.json").read_text())
    assert got["resumed_from_step"] == resume_step, got
    folder, resumed_from = got["resumed_from"].split("/")
    assert folder == resume_folder, got
    assert got["global_step"] == expected["global_step"] == 39
    assert got["model"] == expected["model"]
    assert got["optimizer"] == expected["optimizer"]
    assert got["scheduler"] == expected["scheduler"]
    assert got["best_model_score"] == expected["best_model_score"]
    assert got["best_model_path"] == expected["best_model_path"]
    # the file resumed from stays (never deleted by the run that resumed from it); all else as uninterrupted
    assert resumed_from in got["kept"][folder]
    for name in ("checkpoints", "best"):
        assert set(got["kept"][name]) - {resumed_from} == set(expected["kept"][name]) - {resumed_from}, name
    # a stateful callback ends with the events of the uninterrupted run: each batch end, validation end
    # and epoch end once, none added
    missing = [event for event in expected["events"] if event not in got["events"]]
    extra = [event for event in got["events"] if event not in expected["events"]]
    assert got["events"] == expected["events"], f"missing {missing}, extra {extra}"
