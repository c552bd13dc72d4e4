"""``ckpthooks preempted``: a job script's way to tell a preemption from a failure, whatever the
launcher (torchrun exits 1 when its workers exit 143 after a preemption save)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckpthooks import Checkpointer
from ckpthooks.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_preempt_torchrun_worker.py")


def preempted(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["preempted", *args])
    return result.exit_code, result.output


def train(root: Path, steps: int, signal_at: int | None = None) -> int | None:
    """Train in this process; with ``signal_at``, SIGTERM arrives during that step. The exit code
    of the preemption (SystemExit), or None when training finished."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    ckpt = Checkpointer(root).track(model=model)

    @ckpt.loop(max_epochs=1, ckpt_path="last")
    def epoch(index: int) -> None:
        for step in ckpt.batches(range(steps)):
            if step == signal_at:
                os.kill(os.getpid(), signal.SIGTERM)

    try:
        epoch()
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 1
    return None


def test_a_preemption_save_answers_yes_and_a_finished_run_no(tmp_path: Path) -> None:
    before = time.time()
    assert train(tmp_path, steps=50, signal_at=10) == 143
    code, output = preempted(str(tmp_path))
    assert code == 0 and "preempted.ckpt" in output
    assert preempted(str(tmp_path), "--since", str(before))[0] == 0
    # only a preemption after --since counts (an earlier job's)
    assert preempted(str(tmp_path), "--since", str(time.time() + 5))[0] == 1
    # the requeued job resumes and finishes: its newest checkpoint is no preemption save
    assert train(tmp_path, steps=50) is None
    code, output = preempted(str(tmp_path))
    assert code == 1 and "not a preemption save" in output


def test_no_checkpoint_is_no_preemption_and_a_missing_root_is_trouble(tmp_path: Path) -> None:
    code, output = preempted(str(tmp_path))
    assert code == 1 and "no committed checkpoint" in output
    assert preempted(str(tmp_path / "absent"))[0] == 2
    code, output = preempted(str(tmp_path), "--since", "yesterday")
    assert code == 2 and "ISO 8601" in output


def test_since_takes_an_iso_time_and_json_says_why(tmp_path: Path) -> None:
    assert train(tmp_path, steps=20, signal_at=3) == 143
    code, output = preempted(str(tmp_path), "--since", "2000-01-01T00:00:00", "--json")
    record: dict[str, Any] = json.loads(output)
    assert code == 0 and record["preempted"] is True and record["writer"] == "preemption"
    assert record["last"].endswith("preempted.ckpt") and record["since"] == pytest.approx(946684800, abs=86400)


@pytest.mark.distributed
def test_a_job_script_requeues_a_torchrun_job_preempted_with_sigterm(tmp_path: Path) -> None:
    """The SLURM recipe with torchrun: SIGTERM to torchrun, whose workers save and exit 143 while
    torchrun itself exits 1; the command still says "preempted"."""
    env = dict(os.environ)
    env.update(CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    start = int(time.time())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(WORKER), str(tmp_path), "100000"]  # fmt: skip
    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "training").exists():
            assert job.poll() is None, job.communicate()[0]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        job.send_signal(signal.SIGTERM)
        output = job.communicate(timeout=60)[0]
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode not in (0, 143), output  # what the documented `$? -eq 143` test missed
    script = f'ckpthooks preempted "{tmp_path}" --since {start} && echo requeue'
    shell_env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    decided = subprocess.run(["sh", "-c", script], env=shell_env, capture_output=True, text=True, check=False)
    assert decided.returncode == 0, decided.stdout + decided.stderr
    assert "preempted.ckpt" in decided.stdout and decided.stdout.strip().endswith("requeue")
