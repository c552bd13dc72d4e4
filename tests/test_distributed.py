"""Real torch.distributed runs (gloo, 2 CPU processes): one writer, shared outcomes, no hangs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import rank_zero_only
from ckpthooks._io.durable import TEMP_MARKER
from ckpthooks._manifest import MANIFEST_SUFFIX

WORKER = Path(__file__).with_name("_dist_worker.py")
REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
JOIN_TIMEOUT = 90.0  # far above a normal run (a few seconds); the test fails instead of hanging


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SCENARIOS = (
    "fit",
    "fit_straggler",
    "fail",
    "link",
    "metrics",
    "time_interval",
    "restore_views",
    "restore_unreadable",
    "mismatch",
    "one_sided",  # leaves the process group unusable: last
)


def run_ranks(scenarios: tuple[str, ...], workdir: Path) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Start every rank, run ``scenarios`` in them, wait (bounded); each scenario's per-rank results."""
    env = dict(os.environ)
    env.update(CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    port = str(_free_port())
    started = time.monotonic()
    command = [sys.executable, str(WORKER), ",".join(scenarios)]
    procs = [
        subprocess.Popen(
            [*command, str(rank), str(WORLD_SIZE), port, str(workdir)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(WORLD_SIZE)
    ]
    outputs: list[str] = []
    try:
        for proc in procs:
            remaining = max(1.0, JOIN_TIMEOUT - (time.monotonic() - started))
            out, _ = proc.communicate(timeout=remaining)
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate()
        pytest.fail(f"distributed scenarios {scenarios} did not finish within {JOIN_TIMEOUT}s (hang)")
    elapsed = time.monotonic() - started
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{out}"
    results: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios:
        results[scenario] = []
        for rank in range(WORLD_SIZE):
            path = workdir / scenario / f"result-{rank}.json"
            assert path.exists(), f"rank {rank} did not finish {scenario!r}:\n{outputs[rank]}"
            results[scenario].append(json.loads(path.read_text()))
    return results, elapsed


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict[str, Any]]], float]:
    """All scenarios in one pair of processes (starting Python and torch dominates the cost)."""
    workdir = tmp_path_factory.mktemp("distributed")
    results, elapsed = run_ranks(SCENARIOS, workdir)
    return workdir, results, elapsed


def _results(runs: Any, scenario: str) -> tuple[Path, list[dict[str, Any]]]:
    workdir, results, _ = runs
    for rank, result in enumerate(results[scenario]):
        assert "error" not in result, f"rank {rank} failed in {scenario!r}:\n{result['error']}"
    return workdir / scenario, results[scenario]


def _save_log(workdir: Path, rank: int) -> list[str]:
    return (workdir / f"saves-rank{rank}.log").read_text().splitlines()


def _check_single_writer_run(workdir: Path, results: list[dict[str, Any]]) -> None:
    folder = workdir / "run" / "checkpoints"
    names = ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert sorted(os.listdir(folder)) == sorted(names + [n + MANIFEST_SUFFIX for n in names])
    assert sorted(os.listdir(workdir / "run")) == ["checkpoints"]

    # only rank 0 ever wrote, and it wrote each save once
    assert _save_log(workdir, 1) == []
    assert _save_log(workdir, 0) == [
        f"0 {folder / 'epoch=0-step=4.ckpt'}",
        f"0 {folder / 'last.ckpt'}",
        f"0 {folder / 'epoch=1-step=8.ckpt'}",
        f"0 {folder / 'last.ckpt'}",
    ]

    expected_last = str(folder / "last.ckpt")
    for rank, result in enumerate(results):
        assert result["is_global_zero"] is (rank == 0)
        assert result["world_size"] == WORLD_SIZE
        assert result["epochs_run"] == 2 and result["global_step"] == 8
        assert result["last"] == expected_last
        assert result["all_last"] == [expected_last] * WORLD_SIZE
        assert result["restored_from"] == expected_last and result["restored_step"] == 8
        assert result["changed_by_restore"] is True
        assert result["equal_to_trained"] is True
        assert result["optimizer_restored"] is True
        assert result["equal_across_ranks"] is True
    assert results[0]["rank_zero_only"] == "ran on rank 0"
    assert results[1]["rank_zero_only"] is None

    params = [torch.load(workdir / f"params-rank{rank}.pt") for rank in range(WORLD_SIZE)]
    assert params[0].numel() > 0
    assert torch.equal(params[0], params[1])


@pytest.mark.distributed
def test_one_writer_same_last_and_equal_restore(runs: Any) -> None:
    workdir, results = _results(runs, "fit")
    _check_single_writer_run(workdir, results)
    assert results[0]["policy"] == results[1]["policy"]


@pytest.mark.distributed
def test_policy_state_agrees_when_a_rank_lags_behind_the_writer(runs: Any) -> None:
    """Rank 1 reaches the save after rank 0 already wrote the file: it must still use rank 0's
    file name (Lightning broadcasts it), not invent a "-v1" variant of its own."""
    workdir, results = _results(runs, "fit_straggler")
    _check_single_writer_run(workdir, results)
    folder = workdir / "run" / "checkpoints"
    expected = {
        "best_model_path": str(folder / "epoch=1-step=8.ckpt"),
        "last_model_path": str(folder / "last.ckpt"),
        "best_k_models": [],
    }
    assert results[0]["policy"] == expected
    assert results[1]["policy"] == expected


@pytest.mark.distributed
def test_failed_write_on_rank_zero_raises_on_every_rank(runs: Any) -> None:
    workdir, (rank0, rank1) = _results(runs, "fail")
    assert rank0["raised"] == "StorageError", rank0
    assert "injected on rank 0" in rank0["message"]
    assert rank1["raised"] == "DistributedCheckpointError", rank1
    assert "CheckpointError" in rank1["mro"]
    assert "rank 0" in rank1["message"] and "injected on rank 0" in rank1["message"]
    # both failed at the first save (end of epoch 0), well inside the process-group timeout
    assert rank0["global_step"] == rank1["global_step"] == 4
    assert rank0["seconds"] < 20 and rank1["seconds"] < 20
    # rank 1 never wrote; nothing was committed and no temporary file is left behind
    assert _save_log(workdir, 1) == []
    assert len(_save_log(workdir, 0)) == 1
    folder = workdir / "run" / "checkpoints"
    leftovers = os.listdir(folder) if folder.exists() else []
    assert [n for n in leftovers if TEMP_MARKER in n or n.endswith(MANIFEST_SUFFIX)] == []


# ---------------------------------------------------------------------- without a process group


def test_rank_zero_only_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    @rank_zero_only
    def record(value: int) -> int:
        calls.append(value)
        return value * 2

    assert record.__name__ == "record"
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(variable, raising=False)
    assert record(3) == 6
    monkeypatch.setenv("RANK", "1")
    assert record(4) is None
    monkeypatch.setenv("RANK", "0")
    assert record(5) == 10
    assert calls == [3, 5]


@pytest.mark.distributed
def test_save_last_link_works_under_ddp(runs: Any) -> None:
    workdir, results = _results(runs, "link")
    folder = workdir / "run" / "checkpoints"
    for result in results:
        assert result["global_step"] == 8
        assert result["linked"] is True
        assert result["last_model_path"] == str(folder / "last.ckpt")
        names = ["epoch=1.ckpt", "last.ckpt"]
        assert result["files"] == sorted(names + [f"{n}{MANIFEST_SUFFIX}" for n in names])
    # rank 0 wrote the two top-k files once each; last.ckpt was never written, only linked
    assert _save_log(workdir, 1) == []
    assert _save_log(workdir, 0) == [f"0 {folder / 'epoch=0.ckpt'}", f"0 {folder / 'epoch=1.ckpt'}"]


# ---------------------------------------------------------------------- agreement between ranks


@pytest.mark.distributed
def test_ranks_logging_different_metrics_follow_rank_zero(runs: Any) -> None:
    """Rank 1 logs val_loss values that rank the epochs the other way round: the monitor values,
    file names, top-k and best score are rank 0's on both ranks."""
    workdir, (rank0, rank1) = _results(runs, "metrics")
    folder = workdir / "run" / "checkpoints"
    kept = ["epoch=1-val_loss=1.00.ckpt", "epoch=2-val_loss=2.00.ckpt", "last.ckpt"]
    assert rank0 == rank1
    assert rank0["best_model_path"] == str(folder / "epoch=1-val_loss=1.00.ckpt")
    assert rank0["best_model_score"] == 1.0 and rank0["kth_value"] == 2.0
    assert rank0["best_k_models"] == {str(folder / kept[0]): 1.0, str(folder / kept[1]): 2.0}
    assert rank0["files"] == sorted(kept + [n + MANIFEST_SUFFIX for n in kept])
    # the manifests record the values the decisions were made on
    assert rank0["manifest_val_loss"] == {
        kept[0] + MANIFEST_SUFFIX: 1.0,
        kept[1] + MANIFEST_SUFFIX: 2.0,
        "last.ckpt" + MANIFEST_SUFFIX: 2.0,
    }
    assert _save_log(workdir, 1) == []


@pytest.mark.distributed
def test_train_time_interval_follows_rank_zeros_clock(runs: Any) -> None:
    workdir, (rank0, rank1) = _results(runs, "time_interval")
    assert rank0 == rank1
    assert 1 <= len(_save_log(workdir, 0)) < 6  # rank 1's fast clock alone would save at every step
    assert _save_log(workdir, 1) == []


@pytest.mark.distributed
def test_every_rank_resumes_from_the_checkpoint_rank_zero_finds(runs: Any) -> None:
    workdir, (rank0, rank1) = _results(runs, "restore_views")
    expected = str(workdir / "shared" / "checkpoints" / "last.ckpt")
    assert rank0["rank0_last"] == expected
    assert rank1["own_view"] == str(workdir / "rank1-only" / "older.ckpt")  # what rank 1 alone would pick
    for result in (rank0, rank1):
        assert result["restored_from"] == expected
        assert result["restored_step"] == 8
        assert result["equal_to_trained"] is True
        assert result["all_restored"][0] == result["all_restored"][1]
        # rank 0 chose "last" by loading it: each rank checked the file once (rank 0 did twice)
        assert result["checks"] == [expected]


@pytest.mark.distributed
def test_a_rank_that_cannot_read_the_checkpoint_fails_every_rank(runs: Any) -> None:
    _workdir, (rank0, rank1) = _results(runs, "restore_unreadable")
    assert rank1["raised"] == "CheckpointNotFoundError", rank1
    assert rank0["raised"] == "DistributedCheckpointError", rank0
    assert "failed on rank 1" in rank0["message"] and "not visible on rank 1" in rank0["message"]
    assert rank0["seconds"] < 20 and rank1["seconds"] < 20


@pytest.mark.distributed
def test_save_checkpoint_with_rank_dependent_paths_is_refused_before_writing(runs: Any) -> None:
    workdir, results = _results(runs, "mismatch")
    for result in results:
        assert result["raised"] == "DistributedCheckpointError", result
        assert "out of step" in result["message"]
        assert "manual-rank0.ckpt" in result["message"] and "manual-rank1.ckpt" in result["message"]
        assert result["seconds"] < 20
    assert _save_log(workdir, 0) == [] and _save_log(workdir, 1) == []
    written = os.listdir(workdir / "run") if (workdir / "run").exists() else []
    assert not any(name.startswith("manual") for name in written)


@pytest.mark.distributed
def test_save_checkpoint_on_one_rank_only_raises_after_the_process_group_timeout(runs: Any) -> None:
    _workdir, (rank0, rank1) = _results(runs, "one_sided")
    assert rank0["raised"] == "DistributedCheckpointError", rank0
    assert "could not agree" in rank0["message"] and "every rank" in rank0["message"]
    assert 1.5 < rank0["seconds"] < 15  # the (lowered) 2 s process-group timeout, not forever
    assert rank0["written"] is False  # refused before anything was written
    assert rank1["waited_for_rank0"] is True
