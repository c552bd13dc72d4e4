"""Resume on two "nodes" whose checkpoint folders are node-local disks.

Each rank runs in a mount namespace of its own in which the same path, ``ROOT``, is a folder of that
node only (as two hosts with a node-local disk mounted at the same place). Where mount namespaces
cannot be made (no ``unshare``, not root), each rank gets a folder of its own instead, which covers
the placement where global rank 0 sees nothing.

c10d's rendezvous does not say which node global rank 0 lands on: both placements are tested.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKER = Path(__file__).with_name("_two_node_worker.py")
REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 90.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mount_namespaces() -> bool:
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


NAMESPACES = _mount_namespaces()


def run_nodes(
    tmp_path: Path, steps: tuple[int, int], shared: bool = False, **extra_env: str
) -> list[dict[str, Any]]:
    """Rank r on node r, whose disk holds a checkpoint at ``steps[r]`` (none for 0); ``shared``:
    both ranks use one folder instead."""
    env = dict(os.environ)
    env.update(CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra_env)
    port = str(_free_port())
    mount = tmp_path / "local-disk"  # the same path on both nodes
    mount.mkdir()
    procs = []
    for rank, step in enumerate(steps):
        disk = tmp_path / f"node{rank}"
        disk.mkdir()
        out = tmp_path / f"result-{rank}.json"
        root = tmp_path / "node0" if shared else mount if NAMESPACES else disk
        command = [sys.executable, str(WORKER), str(rank), "2", port, str(root), str(step), str(out)]
        if NAMESPACES and not shared:
            script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                       str(disk), str(mount), *command]  # fmt: skip
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"the two nodes did not finish within {TIMEOUT}s (hang)")
    results = []
    for rank, (proc, output) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{output}"
        results.append(json.loads((tmp_path / f"result-{rank}.json").read_text()))
    return results


@pytest.mark.distributed
def test_rank_zero_on_the_node_without_a_checkpoint_fails_every_rank(tmp_path: Path) -> None:
    """Rank 0 sees no checkpoint, rank 1 sees one: before, every rank started from step 0 without
    a word (and wrote a second set of checkpoints on rank 0's node)."""
    rank0, rank1 = run_nodes(tmp_path, (0, 6))
    host = socket.gethostname()
    for result in (rank0, rank1):
        assert result["raised"] == "DistributedCheckpointError", result
        message = result["message"]
        lowered = message.lower()
        assert "rank 0" in lowered and "rank 1" in lowered and host in message
        assert "no committed checkpoint" in message
        assert "step=6.ckpt" in message and "step 6" in message
        assert "share" in message  # the remedy: a folder every node shares
        assert result["seconds"] < 20


@pytest.mark.distributed
def test_another_rank_seeing_a_newer_checkpoint_fails_every_rank(tmp_path: Path) -> None:
    rank0, rank1 = run_nodes(tmp_path, (4, 9))
    for result in (rank0, rank1):
        assert result["raised"] == "DistributedCheckpointError", result
        assert "step=4.ckpt" in result["message"] and "step 4" in result["message"]
        assert "step=9.ckpt" in result["message"] and "step 9" in result["message"]


@pytest.mark.distributed
@pytest.mark.skipif(not NAMESPACES, reason="needs mount namespaces (unshare, root): other folders are readable")
def test_rank_zero_on_the_node_with_the_checkpoint_fails_every_rank(tmp_path: Path) -> None:
    """The other placement: rank 1 cannot read what rank 0 chose; every rank raises, none trains."""
    rank0, rank1 = run_nodes(tmp_path, (6, 0))
    assert rank1["raised"] == "CheckpointNotFoundError", rank1
    assert rank0["raised"] == "DistributedCheckpointError", rank0
    assert "failed on rank 1" in rank0["message"]


@pytest.mark.distributed
def test_ranks_seeing_the_same_checkpoint_resume_from_it(tmp_path: Path) -> None:
    """Both node disks hold the same checkpoint (as after copying it to every node): no error."""
    rank0, rank1 = run_nodes(tmp_path, (5, 5))
    for result in (rank0, rank1):
        assert result["raised"] is None, result
        assert result["step"] == 5
        assert result["restored_from"].endswith("step=5.ckpt")


@pytest.mark.distributed
def test_a_newer_checkpoint_rank_zero_passed_over_is_no_conflict(tmp_path: Path) -> None:
    """A shared folder whose newest checkpoint is damaged: rank 0 skips it and resumes from the one
    before; the other ranks see the damaged one as their newest, but rank 0 tried it: no error."""
    rank0, rank1 = run_nodes(tmp_path, (4, 0), shared=True, DAMAGED_STEP="9")
    for result in (rank0, rank1):
        assert result["raised"] is None, result
        assert result["step"] == 4
        assert result["restored_from"].endswith("step=4.ckpt")
