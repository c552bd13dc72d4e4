"""Preemption under torch.distributed (2 gloo ranks): the ranks agree on a signal without a
collective per step, and act on it at the same step, whatever the step it arrived at."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ckpthooks._preemption import MAX_AGREE_STEPS

WORKER = Path(__file__).with_name("preempt_agreement_worker.py")
REPO = Path(__file__).resolve().parents[1]
JOIN_TIMEOUT = 120.0  # a normal run takes seconds; the test fails instead of hanging

#: the fixed interval the worker's scenarios use (``fixed=8``)
K = 8

SCENARIOS = (
    "phase_first_step",
    "phase_before_agreement",
    "phase_at_agreement",
    "phase_after_agreement",
    "phase_rank_zero",
    "both_ranks_different_steps",
    "epoch_end_first",
    "after_epoch_end",
    "adaptive",
    "fallback_default_group",
    "fallback_on_one_rank",
    "count_fixed",
    "count_default",
    "fit_end_outstanding",
    "both_ranks_fail",
    "one_rank_fails",  # leaves rank 1 on its own: last
)

Results = dict[str, list[dict[str, Any]]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """Every scenario in one pair of processes (starting Python and torch dominates the cost)."""
    workdir = tmp_path_factory.mktemp("preemption")
    env = dict(os.environ, CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    port = str(_free_port())
    command = [sys.executable, str(WORKER), ",".join(SCENARIOS)]
    options: dict[str, Any] = {"cwd": workdir, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    procs = [
        subprocess.Popen([*command, str(rank), "2", port, str(workdir)], text=True, **options) for rank in range(2)
    ]
    started = time.monotonic()
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, JOIN_TIMEOUT - (time.monotonic() - started)))[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.communicate()
        pytest.fail(f"the preemption scenarios did not finish within {JOIN_TIMEOUT}s (hang)")
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{out}"
    results: Results = {}
    for scenario in SCENARIOS:
        results[scenario] = []
        for rank in range(2):
            path = workdir / scenario / f"result-{rank}.json"
            assert path.exists(), f"rank {rank} did not finish {scenario!r}:\n{outputs[rank]}"
            results[scenario].append(json.loads(path.read_text()))
    return results


def acted_on(signalled_at: int) -> int:
    """The step a signal raised during step ``signalled_at`` is acted on, with agreements every K
    steps: it goes out with the next agreement, and its result is read at the one after."""
    return K * (math.ceil(signalled_at / K) + 1)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    "scenario, signalled_at",
    [
        ("phase_first_step", 1),
        ("phase_before_agreement", K - 1),
        ("phase_at_agreement", K),
        ("phase_after_agreement", K + 1),
        ("phase_rank_zero", 13),
        ("both_ranks_different_steps", 3),
    ],
)
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step_whatever_its_phase(
    runs: Results, scenario: str, signalled_at: int
) -> None:
    expected = acted_on(signalled_at)
    for rank, result in enumerate(runs[scenario]):
        assert result["error"] is None, (rank, result["error"])
        assert result["code"] == 143, (rank, result)
        assert result["step"] == result["last"] == expected, (rank, result)
        assert result["manifest_step"] == expected, (rank, result)


@pytest.mark.slow
@pytest.mark.distributed
def test_an_epoch_end_before_the_next_agreement_acts_on_the_signal(runs: Results) -> None:
    # 10 steps per epoch, agreements every 8: a signal during step 9 is acted on at the epoch end
    assert [(r["code"], r["step"], r["manifest_step"]) for r in runs["epoch_end_first"]] == [(143, 10, 10)] * 2


@pytest.mark.slow
@pytest.mark.distributed
def test_after_an_epoch_end_the_intervals_start_again_from_it(runs: Results) -> None:
    # 20 steps per epoch: agreements at 8 and 16, the epoch end at 20, then 28 and 36
    assert [(r["code"], r["step"], r["manifest_step"]) for r in runs["after_epoch_end"]] == [(143, 36, 36)] * 2


@pytest.mark.slow
@pytest.mark.distributed
def test_the_adaptive_schedule_acts_at_the_same_step_on_every_rank(runs: Results) -> None:
    steps = {r["step"] for r in runs["adaptive"]}
    assert [r["code"] for r in runs["adaptive"]] == [143, 143]
    assert len(steps) == 1
    (step,) = steps
    assert 5 <= step <= 5 + 2 * MAX_AGREE_STEPS
    assert {r["manifest_step"] for r in runs["adaptive"]} == {step}


@pytest.mark.slow
@pytest.mark.distributed
def test_without_a_group_of_its_own_the_agreement_uses_the_default_group(runs: Results) -> None:
    for result in runs["fallback_default_group"]:
        assert any("using the default process group" in w for w in result["warnings"]), result["warnings"]
        assert (result["code"], result["step"], result["manifest_step"]) == (143, acted_on(5), acted_on(5))


@pytest.mark.slow
@pytest.mark.distributed
def test_a_rank_without_a_group_of_its_own_takes_every_rank_to_the_default_group(runs: Results) -> None:
    """One rank's group failed, the other rank's did not (seen after a torchrun restart): the ranks
    agree on the default group; before, each all-reduced on another group and both hung."""
    rank0, rank1 = runs["fallback_on_one_rank"]
    assert any("using the default process group" in w for w in rank1["warnings"]), rank1["warnings"]
    assert any("another rank could not create" in w for w in rank0["warnings"]), rank0["warnings"]
    for result in (rank0, rank1):
        assert (result["code"], result["step"], result["manifest_step"]) == (143, acted_on(5), acted_on(5))
        assert result["seconds"] < 30


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("scenario, k", [("count_fixed", 16), ("count_default", 16)])
def test_at_most_one_collective_every_k_steps(runs: Results, scenario: str, k: int) -> None:
    for result in runs[scenario]:
        assert result["step"] == 512
        assert result["collectives"] <= 512 // k, result
        assert result["dedicated_group"], "the flag went through the default process group"


@pytest.mark.slow
@pytest.mark.distributed
def test_an_outstanding_agreement_is_finished_at_fit_end(runs: Results) -> None:
    # 11 steps with agreements every 8: one all-reduce in flight at fit_end, 20 fits in a row
    for result in runs["fit_end_outstanding"]:
        assert len(result["repeats"]) == 20
        assert all(r["error"] is None and r["step"] == 11 for r in result["repeats"])
        assert result["warnings"] == []


@pytest.mark.slow
@pytest.mark.distributed
def test_an_exception_on_every_rank_leaves_nothing_pending(runs: Results) -> None:
    for rank, result in enumerate(runs["both_ranks_fail"]):
        assert result["error"] == f"RuntimeError: failure on rank {rank} at step 11"
        assert result["warnings"] == []


@pytest.mark.slow
@pytest.mark.distributed
def test_when_one_rank_fails_the_other_raises_instead_of_hanging(runs: Results) -> None:
    failed, alone = runs["one_rank_fails"]
    assert failed["error"] == "RuntimeError: failure on rank 0 at step 11"
    assert alone["error"] is not None and "could not agree on a preemption signal" in alone["error"]
    assert alone["seconds"] < 30  # the process group's timeout is 60 s: the loss was noticed, not timed out
