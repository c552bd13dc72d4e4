"""Sharded checkpoints with real 2-process gloo groups: FSDP2 shards written by every rank into one
folder, committed by rank 0; resumes that reshard 2 -> 2, 1 -> 2 and 2 -> 1; failures on one rank."""

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
from ckpthooks import Checkpointer
from ckpthooks.plugin import MANIFEST_SUFFIX, hash_local_folder, read_manifest, verify_checkpoint

from ckpthooks_dcp import DCPCheckpointIO

HERE = Path(__file__).resolve().parent
PLUGIN_ROOT = HERE.parent
REPO = PLUGIN_ROOT.parent.parent
WORKER = HERE / "_dcp_worker.py"
WORLD_SIZE = 2
JOIN_TIMEOUT = 90.0  # far above a normal run (a few seconds); the test fails instead of hanging
SCENARIOS = ("train", "resume", "from_one", "fail")

sys.path.insert(0, str(HERE))
from _dcp_worker import build, full_state, same, train_steps  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _save_in_one_process(folder: Path) -> None:
    """What scenario from_one loads: a checkpoint saved without any process group."""
    model, optimizer = build(seed=5, shard=False)
    train_steps(model, optimizer, 3, seed=5)
    ckpt = Checkpointer(folder, enable_checkpointing=False, checkpoint_io=DCPCheckpointIO())
    ckpt.track(model=model, optimizers=optimizer).progress.global_step = 3
    ckpt.save_checkpoint(folder / "single.ckpt")
    torch.save(full_state(model, optimizer), folder / "reference.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    workdir = tmp_path_factory.mktemp("dcp")
    (workdir / "one").mkdir()
    _save_in_one_process(workdir / "one")
    ranks_dir = workdir / "ranks"
    ranks_dir.mkdir()
    env = dict(os.environ)
    env.update(
        CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(PLUGIN_ROOT), str(REPO)]),
    )
    port = str(_free_port())
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), ",".join(SCENARIOS), str(rank), str(WORLD_SIZE), port, str(ranks_dir)],
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
            out, _ = proc.communicate(timeout=max(1.0, JOIN_TIMEOUT - (time.monotonic() - started)))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate()
        pytest.fail(f"the sharded scenarios did not finish within {JOIN_TIMEOUT}s (hang)")
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{out}"
    results: dict[str, list[dict[str, Any]]] = {}
    for scenario in SCENARIOS:
        results[scenario] = []
        for rank in range(WORLD_SIZE):
            path = ranks_dir / scenario / f"result-{rank}.json"
            assert path.exists(), f"rank {rank} did not finish {scenario!r}:\n{outputs[rank]}"
            results[scenario].append(json.loads(path.read_text()))
    return workdir, results


def _results(runs: Any, scenario: str) -> tuple[Path, list[dict[str, Any]]]:
    workdir, results = runs
    for rank, result in enumerate(results[scenario]):
        assert "error" not in result, f"rank {rank} failed in {scenario!r}:\n{result['error']}"
    return workdir / "ranks" / scenario, results[scenario]


@pytest.mark.distributed
def test_every_rank_writes_its_shards_into_one_folder_committed_by_rank_zero(runs: Any) -> None:
    workdir, (rank0, rank1) = _results(runs, "train")
    folder = workdir / "run" / "checkpoints"
    kept = ["epoch=2-step=6.ckpt", "last.ckpt"]  # epoch 0 and 1 were pruned, last overwritten twice
    assert rank0["files"] == rank1["files"] == sorted(kept + [n + MANIFEST_SUFFIX for n in kept])
    for name in kept:
        assert rank0["shards"][name] == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert rank0["best_model_path"] == rank1["best_model_path"] == str(folder / "epoch=2-step=6.ckpt")
    assert rank0["last_model_path"] == rank1["last_model_path"] == str(folder / "last.ckpt")
    assert rank0["placements"] == "(Shard(dim=0),)" and rank0["local_rows"] == 8  # really sharded


@pytest.mark.distributed
def test_the_manifest_checksums_every_rank_s_files_as_they_were_written(runs: Any) -> None:
    """Each rank hashes the shards it writes while DCP writes them; rank 0 combines every rank's
    digests (and its own .metadata's) without reading any file back."""
    workdir, (rank0, rank1) = _results(runs, "train")
    folder = workdir / "run" / "checkpoints"
    for name in ("epoch=2-step=6.ckpt", "last.ckpt"):
        manifest = read_manifest(str(folder / name))
        assert manifest is not None and manifest.algorithm == "xxh3_64/files"
        assert (manifest.size, manifest.checksum) == hash_local_folder(str(folder / name), "xxh3_64")
        verify_checkpoint(str(folder / name))
    assert rank0["read_back"] == rank1["read_back"] == []


@pytest.mark.distributed
def test_two_ranks_resume_their_shards_with_a_fresh_optimizer(runs: Any) -> None:
    _workdir, results = _results(runs, "resume")
    for result in results:
        assert result["path"].endswith(os.path.join("train", "run", "checkpoints", "last.ckpt"))
        assert result["global_step"] == 6
        assert result["equal"] is True
        assert result["optimizer_state_kinds"] == ["DTensor", "Tensor"]  # exp_avg sharded, step whole


@pytest.mark.distributed
def test_saved_by_one_process_loaded_by_two_ranks(runs: Any) -> None:
    _workdir, results = _results(runs, "from_one")
    for result in results:
        assert result["equal"] is True and result["global_step"] == 3
        assert result["local_rows"] == 8


@pytest.mark.distributed
def test_saved_by_two_ranks_loaded_by_one_process(runs: Any) -> None:
    workdir, _ranks = _results(runs, "train")
    model, optimizer = build(seed=9, shard=False)
    ckpt = Checkpointer(workdir / "run" / "checkpoints", checkpoint_io=DCPCheckpointIO(), enable_checkpointing=False)
    report = ckpt.track(model=model, optimizers=optimizer).restore("last", must_exist=True, strict=False)
    assert report is not None and report.global_step == 6
    assert same(full_state(model, optimizer), torch.load(workdir / "reference.pt"))
    train_steps(model, optimizer, 1, seed=3)


@pytest.mark.distributed
def test_fsdp2_on_a_one_rank_group_loads_what_two_ranks_saved(runs: Any, tmp_path: Path) -> None:
    """A 2-rank checkpoint resharded onto FSDP2 over a single rank (DTensors on a 1-rank mesh):
    the plugin built DTensor destinations only above one rank and failed with "got mixed
    torch.Tensor and DTensor"."""
    workdir, _ranks = _results(runs, "train")
    env = dict(os.environ)
    env.update(
        CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(PLUGIN_ROOT), str(REPO)]),
        DCP_TRAIN_FOLDER=str(workdir),
    )
    command = [sys.executable, str(WORKER), "one_rank", "0", "1", str(_free_port()), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=JOIN_TIMEOUT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "one_rank" / "result-0.json").read_text())
    assert "error" not in result, result["error"]
    assert result["world_size"] == 1 and result["global_step"] == 6
    assert result["equal"] is True, result["differ"]
    assert "Shard(dim=0)" in result["placements"]


@pytest.mark.distributed
def test_a_failed_write_on_one_rank_raises_on_every_rank_and_keeps_the_old_folder(runs: Any) -> None:
    _workdir, (rank0, rank1) = _results(runs, "fail")
    for result in (rank0, rank1):
        assert result["raised"] == "StorageError", result
        assert "injected on rank 1" in result["message"] and "rank 1" in result["message"]
        assert result["seconds"] < 20
        assert result["files"] == ["last.ckpt", "last.ckpt" + MANIFEST_SUFFIX]  # no fresh or kept folder
        assert result["restored"].endswith("last.ckpt")
        assert result["old_state_back"] is True
