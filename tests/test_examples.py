"""The examples a newcomer copies from run, resume, and restore what they claim to."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_plain_loop_resumes_from_last_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    first = run_example("plain_loop.py", "--root", str(tmp_path / "a"), "--epochs", "2")
    assert first.returncode == 0, first.stderr
    assert "resumed" not in first.stdout
    second = run_example(
        "plain_loop.py", "--root", str(tmp_path / "a"), "--epochs", "4", "--summary", str(tmp_path / "a.json")
    )
    assert second.returncode == 0, second.stderr
    assert "epoch 0:" not in second.stdout and "epoch 2:" in second.stdout
    assert "resumed: restored model" in second.stdout
    # where it resumed from is said when the resumed run starts, before its first epoch
    lines = second.stdout.splitlines()
    assert lines[0] == (
        f"resuming from {tmp_path / 'a' / 'checkpoints' / 'last.ckpt'}: epoch 2, 0 of its batches done, global step 28"
    ), lines[:2]
    reference = run_example(
        "plain_loop.py", "--root", str(tmp_path / "b"), "--epochs", "4", "--summary", str(tmp_path / "b.json")
    )
    assert reference.returncode == 0, reference.stderr
    resumed, uninterrupted = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert resumed == uninterrupted


def test_amp_loop_restores_the_grad_scaler(tmp_path: Path) -> None:
    first = run_example("amp_loop.py", "--root", str(tmp_path), "--epochs", "1")
    assert first.returncode == 0, first.stderr
    second = run_example("amp_loop.py", "--root", str(tmp_path), "--epochs", "2")
    assert second.returncode == 0, second.stderr
    assert "restored model, optimizers, scaler" in second.stdout.replace("callbacks, ", "")
    assert "epoch 1:" in second.stdout and "epoch 0:" not in second.stdout


@pytest.mark.slow
def test_demo_interrupts_resumes_and_matches() -> None:
    demo = run_example("demo.py")
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "killed the training process with SIGKILL" in demo.stdout
    assert "matches the uninterrupted one bit for bit" in demo.stdout
    run2 = demo.stdout.split('== run 2: the same command, ckpt_path="last"\n', 1)[1].splitlines()
    assert run2[0].startswith("resuming from ") and "global step" in run2[0], run2[:2]


def test_the_demo_loop_runs_without_numpy(tmp_path: Path) -> None:
    """`make demo` installs torch and ckpthooks only; the loop's weight digest called .numpy()."""
    import os

    blocker = tmp_path / "no-numpy" / "numpy"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ModuleNotFoundError("No module named numpy", name="numpy")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "plain_loop.py"), "--root", str(tmp_path / "run"), "--epochs", "1",
         "--summary", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=240, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(json.loads((tmp_path / "s.json").read_text())["weights_sha256"]) == 64
