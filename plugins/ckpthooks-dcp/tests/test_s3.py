"""Sharded checkpoints straight on object storage: every rank streams its shards to S3 (a real
S3-compatible server, moto, on loopback), rank 0 commits with the manifest after every rank
succeeded; loads reshard 2 -> 1 and 1 -> 2 from S3; a rank SIGKILLed mid-save leaves the previous
checkpoint "last"."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ckpthooks import Checkpointer
from ckpthooks.plugin import MANIFEST_SUFFIX, read_manifest, verify_checkpoint

from ckpthooks_dcp import DCPCheckpointIO

HERE = Path(__file__).resolve().parent
PLUGIN_ROOT = HERE.parent
REPO = PLUGIN_ROOT.parents[1]
WORKER = HERE / "_dcp_worker.py"
TIMEOUT = 120.0
BUCKET = "dcp-shards"

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from _dcp_worker import build, full_state, same, train_steps  # noqa: E402

pytest.importorskip("s3fs")
pytest.importorskip("moto")
from tests.s3_server import MotoServer, create_bucket, storage_options  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("NO_PROXY", "no_proxy"):  # an HTTP proxy of the machine must not sit in between
            patch.setenv(name, ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get(name)])))
        server = MotoServer(log).start()
        try:
            create_bucket(server.port, BUCKET)
            yield storage_options(server.endpoint)
        finally:
            server.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(scenario: str, workdir: Path, **env_extra: str) -> tuple[list[subprocess.Popen[str]], list[str]]:
    env = dict(os.environ)
    env.update(
        CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(PLUGIN_ROOT), str(REPO)]),
        **env_extra,
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(rank), "2", port, str(workdir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = []
    started = time.monotonic()
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, TIMEOUT - (time.monotonic() - started)))[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"scenario {scenario} did not finish within {TIMEOUT}s (hang)")
    return procs, outputs


def result(workdir: Path, scenario: str, rank: int) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((workdir / scenario / f"result-{rank}.json").read_text())
    assert "error" not in found, found["error"]
    return found


def objects(options: dict[str, Any], prefix: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **options)
    return sorted(name[len(prefix) + 1 :] for name in fs.find(prefix))


def env_for(root: str, options: dict[str, Any]) -> dict[str, str]:
    return {"DCP_S3_ROOT": root, "DCP_S3_OPTIONS": json.dumps(options)}


@pytest.mark.distributed
def test_two_ranks_save_to_s3_and_one_process_loads(s3: dict[str, Any], tmp_path: Path) -> None:
    root = f"s3://{BUCKET}/two-to-one"
    procs, outputs = run_ranks("s3_train", tmp_path, **env_for(root, s3))
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank}:\n{out}"
    rank0 = result(tmp_path, "s3_train", 0)
    assert rank0["last_model_path"] == f"{root}/checkpoints/last.ckpt"
    names = objects(s3, f"{BUCKET}/two-to-one/checkpoints")
    for folder in ("epoch=1-step=4.ckpt", "last.ckpt"):
        assert {f"{folder}/.metadata", f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp"} <= set(names), names
        assert f"{folder}{MANIFEST_SUFFIX}" in names
        manifest = verify_checkpoint(f"{root}/checkpoints/{folder}", storage_options=s3)  # every shard re-hashed
        assert manifest.algorithm == "xxh3_64/files" and manifest.global_step == 4
    assert not [n for n in names if "pending" in n or "tmp" in n], names  # nothing left of the saves
    assert not any(n.startswith("epoch=0") for n in names)  # top-1: the older one was pruned on S3

    model, optimizer = build(seed=9, shard=False)
    ckpt = Checkpointer(root, checkpoint_io=DCPCheckpointIO(), storage_options=s3, enable_checkpointing=False)
    report = ckpt.track(model=model, optimizers=optimizer).restore("last", must_exist=True, strict=False)
    assert report is not None and report.global_step == 4
    assert same(full_state(model, optimizer), torch.load(tmp_path / "s3_train" / "reference.pt"))
    train_steps(model, optimizer, 1, seed=3)


@pytest.mark.distributed
def test_one_process_saves_to_s3_and_two_ranks_load(s3: dict[str, Any], tmp_path: Path) -> None:
    root = f"s3://{BUCKET}/one-to-two"
    model, optimizer = build(seed=5, shard=False)
    train_steps(model, optimizer, 3, seed=5)
    ckpt = Checkpointer(root, checkpoint_io=DCPCheckpointIO(), storage_options=s3, enable_checkpointing=False)
    ckpt.track(model=model, optimizers=optimizer).progress.global_step = 3
    ckpt.save_checkpoint(f"{root}/single.ckpt")
    torch.save(full_state(model, optimizer), tmp_path / "reference.pt")
    procs, outputs = run_ranks(
        "s3_from_one", tmp_path, DCP_S3_SINGLE=f"{root}/single.ckpt",
        DCP_S3_REFERENCE=str(tmp_path / "reference.pt"), **env_for(root, s3),
    )  # fmt: skip
    for rank, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank}:\n{out}"
        found = result(tmp_path, "s3_from_one", rank)
        assert found["equal"] is True and found["global_step"] == 3
        assert found["local_rows"] == 8  # each rank read its half of the 16 rows


@pytest.mark.distributed
def test_a_rank_killed_mid_save_leaves_the_previous_checkpoint_last(s3: dict[str, Any], tmp_path: Path) -> None:
    root = f"s3://{BUCKET}/killed"
    procs, outputs = run_ranks("s3_kill", tmp_path, **env_for(root, s3))
    assert procs[1].returncode == -9, outputs[1]  # SIGKILL while writing its shards
    rank0 = result(tmp_path, "s3_kill", 0)
    assert rank0["raised"] is not None, rank0  # rank 0 noticed, and stopped
    assert read_manifest(f"{root}/second.ckpt", storage_options=s3) is None  # never committed

    model, optimizer = build(seed=11, shard=False)
    ckpt = Checkpointer(root, checkpoint_io=DCPCheckpointIO(), storage_options=s3, enable_checkpointing=False)
    report = ckpt.track(model=model, optimizers=optimizer).restore("last", must_exist=True, strict=False)
    assert report is not None and report.path == f"{root}/first.ckpt" and report.global_step == 2
    assert same(full_state(model, optimizer), torch.load(tmp_path / "s3_kill" / "first.pt"))
    verify_checkpoint(f"{root}/first.ckpt", storage_options=s3)
    # the next start of a checkpointer there removes what the killed save left
    Checkpointer(root, checkpoint_io=DCPCheckpointIO(), storage_options=s3)
    assert not [n for n in objects(s3, f"{BUCKET}/killed") if n.startswith(("second.ckpt", ".second.ckpt"))]
