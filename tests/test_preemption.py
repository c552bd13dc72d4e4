"""Preemption with real signals: save at the next safe point, exit 128 + signal, resume exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from ckpthooks._catalog import read_manifest, verify_checkpoint
from ckpthooks._preemption import PreemptionWatcher

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "exact_resume_worker.py"


def wait_for_line(stream: IO[str], prefix: str, deadline: float) -> list[str]:
    """Read lines until one starts with ``prefix``; returns every line read."""
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting with {prefix!r}")


def start(root: Path, summary: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(root), "--summary", str(summary), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(root: Path, summary: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(WORKER), str(root), "--summary", str(summary)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(summary.read_text())
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    return finish(folder / "run", folder / "summary.json")


@pytest.mark.slow
@pytest.mark.parametrize(
    "signals, sent, code",
    [("TERM", signal.SIGTERM, 143), ("TERM,USR1", signal.SIGUSR1, 138)],
    ids=["SIGTERM", "SIGUSR1"],
)
def test_a_signal_saves_at_the_next_step_exits_and_resumes_exactly(
    tmp_path: Path, uninterrupted: dict[str, object], signals: str, sent: int, code: int
) -> None:
    child = start(
        tmp_path / "run", tmp_path / "x.json", "--signals", signals, "--step-delay", "0.05", "--every", "100"
    )
    assert child.stdout is not None
    wait_for_line(child.stdout, "step 17", time.monotonic() + 120)
    child.send_signal(sent)
    _, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    preempted = tmp_path / "run" / "checkpoints" / "preempted.ckpt"
    manifest = verify_checkpoint(str(preempted))
    assert manifest.writer == "preemption" and 17 <= manifest.global_step < 39
    assert f"received signal {int(sent)}" in err
    # the preemption save was made between steps, not inside the handler: training resumes exactly
    resumed = finish(tmp_path / "run", tmp_path / "resumed.json")
    assert resumed["resumed_from_step"] == manifest.global_step
    for key in ("global_step", "model", "optimizer", "scheduler"):
        assert resumed[key] == uninterrupted[key], key


def test_signals_not_configured_are_left_alone(tmp_path: Path) -> None:
    child = start(tmp_path / "run", tmp_path / "x.json", "--signals", "", "--step-delay", "0.05")
    assert child.stdout is not None
    wait_for_line(child.stdout, "step 3", time.monotonic() + 120)
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGTERM
    assert read_manifest(str(tmp_path / "run" / "checkpoints" / "preempted.ckpt")) is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.distributed
def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    port = str(free_port())
    command = [sys.executable, str(TESTS / "preempt_ddp_worker.py")]
    ranks = [
        subprocess.Popen(
            [*command, str(rank), "2", port, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for rank in range(2)
    ]
    try:
        assert ranks[1].stdout is not None
        early = "".join(wait_for_line(ranks[1].stdout, "rank 1 step 5", time.monotonic() + 120))
        ranks[1].send_signal(signal.SIGTERM)  # only rank 1 is told
        results = [r.communicate(timeout=120) for r in ranks]
        results[1] = (early + results[1][0], results[1][1])
    finally:
        for r in ranks:
            if r.poll() is None:
                r.kill()
    assert [r.returncode for r in ranks] == [143, 143], [e for _, e in results]
    manifest = verify_checkpoint(str(tmp_path / "checkpoints" / "preempted.ckpt"))
    last_steps = []
    for rank, (out, _) in enumerate(results):
        steps = [int(line.split()[-1]) for line in out.splitlines() if line.startswith(f"rank {rank} step")]
        last_steps.append(steps[-1])
        assert f"rank {rank} done" not in out
    assert last_steps[0] == last_steps[1] == manifest.global_step
    assert not os.path.exists(tmp_path / "checkpoints" / ".preempted.ckpt.ckpthooks-prev")


def test_in_one_process_a_signal_is_acted_on_at_the_next_safe_point() -> None:
    watcher = PreemptionWatcher([signal.SIGUSR1])
    assert not watcher.collective
    assert watcher.at_step_end() is None and watcher.at_epoch_end() is None
    watcher._handle(signal.SIGUSR1, None)  # what the installed handler does
    assert watcher.at_step_end() == signal.SIGUSR1
    assert watcher.at_epoch_end() == signal.SIGUSR1


def test_the_agreement_interval_spans_agree_seconds_within_its_bounds() -> None:
    watcher = PreemptionWatcher([signal.SIGTERM], agree_seconds=0.05, min_steps=1, max_steps=1024)
    assert watcher._proposal(steps=10, elapsed=1.0) == 1  # 100 ms steps: agree at every step
    assert watcher._proposal(steps=100, elapsed=0.1) == 50  # 1 ms steps: every 50 steps
    assert watcher._proposal(steps=1000, elapsed=1e-4) == 1024  # no-op steps: the cap
    fixed = PreemptionWatcher([signal.SIGTERM], min_steps=8, max_steps=8)
    assert {fixed._proposal(10, 1.0), fixed._proposal(1000, 1e-4)} == {8}
    with pytest.raises(ValueError, match="min_steps"):
        PreemptionWatcher([signal.SIGTERM], min_steps=0)


def test_close_removes_the_handlers_of_a_loop_that_never_ended_its_fit(tmp_path: Path) -> None:
    """A hand-written loop calls fit_start but stops without fit_end: close() gives SIGTERM back."""
    import torch

    from ckpthooks import Checkpointer

    before = signal.getsignal(signal.SIGTERM)
    ckpt = Checkpointer(str(tmp_path), enable_checkpointing=False).track(model=torch.nn.Linear(2, 2))
    ckpt.fit_start()
    assert signal.getsignal(signal.SIGTERM) is not before
    ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is before
