"""Two XLA ranks on the CPU (real torch_xla): one writer, agreement, bounded failures.

Two set-ups work here (see ``_xla_worker.py`` and the README):

* ``xmp.spawn`` with ``CPU_NUM_DEVICES=2``: one process, one thread per device, ordinals 0 and 1.
  Ranks come from the plugin's ``distributed_context`` (the ordinals).
* ``torchrun`` with 2 processes and a gloo process group initialized alongside: each process is an
  XLA world of one, ranks come from torch.distributed.

Skipped where torch_xla is not installed; ``make xla-test`` runs it in ``.venv-xla``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla", reason="torch_xla is not installed here; the XLA lane runs this (make xla-test)")

import torch

WORKER = Path(__file__).with_name("_xla_worker.py")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 300.0  # a run takes about 15 s; the test fails instead of hanging
XLA_TIMEOUT = 3  # CKPTHOOKS_XLA_TIMEOUT for the worker: the timeout scenario waits this long


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CKPTHOOKS_")}
    pythonpath = [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]
    env.update(
        PJRT_DEVICE="CPU",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(p for p in pythonpath if p),
        CKPTHOOKS_XLA_TIMEOUT=str(XLA_TIMEOUT),
        **extra,
    )
    return env


def _run(command: list[str], env: dict[str, str], workdir: Path) -> str:
    try:
        result = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{command} did not finish within {RUN_TIMEOUT}s (a hang):\n{exc.stdout}\n{exc.stderr}")
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command} exited with {result.returncode}:\n{output[-5000:]}"
    return output


def _results(workdir: Path, scenarios: tuple[str, ...], output: str) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for scenario in scenarios:
        results[scenario] = []
        for rank in range(2):
            path = workdir / scenario / f"result-{rank}.json"
            assert path.exists(), f"rank {rank} did not finish {scenario!r}:\n{output[-5000:]}"
            result = json.loads(path.read_text())
            assert "crashed" not in result, result.get("traceback")
            results[scenario].append(result)
    return results


@pytest.fixture(scope="module")
def spawn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    workdir = tmp_path_factory.mktemp("xla-spawn")
    output = _run([sys.executable, str(WORKER), "spawn", str(workdir)], _env(CPU_NUM_DEVICES="2"), workdir)
    return workdir, _results(workdir, ("fit", "resume", "fail", "mismatch", "timeout"), output)


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    workdir = tmp_path_factory.mktemp("xla-gloo")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), "gloo", str(workdir),
    ]  # fmt: skip
    output = _run(command, _env(), workdir)
    return workdir, _results(workdir, ("fit", "resume", "fail"), output)


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".ckpt")


def _assert_one_writer_and_agreement(workdir: Path, results: dict[str, list[dict[str, Any]]]) -> None:
    writer, other = results["fit"]
    assert (writer["rank"], writer["world_size"], writer["is_global_zero"]) == (0, 2, True)
    assert (other["rank"], other["world_size"], other["is_global_zero"]) == (1, 2, False)
    assert writer["writes"] > 0 and other["writes"] == 0  # only the master writes
    # rank 1 logged losses 100 higher, yet names and ranks files exactly like rank 0
    for key in ("best_model_path", "last_model_path", "kept"):
        assert writer[key] == other[key], key
    folder = workdir / "fit" / "ckpts"
    assert _checkpoint_files(folder) == sorted([*(Path(p).name for p in writer["kept"]), "last.ckpt"])
    for name in _checkpoint_files(folder):
        assert (folder / f"{name}.manifest.json").exists()
        data = torch.load(folder / name, weights_only=True)
        assert {t.device.type for t in data["state_dict"].values()} == {"cpu"}
    assert writer["backend"] == other["backend"] == "XLACheckpointIO"


def _assert_resume(results: dict[str, list[dict[str, Any]]]) -> None:
    trained = results["fit"][0]["params"]
    for resumed in results["resume"]:
        assert resumed["path"].endswith("last.ckpt")
        assert (resumed["epoch"], resumed["global_step"]) == (2, 6)
        assert {"model", "optimizers", "progress"} <= set(resumed["restored"])
        assert resumed["param_devices"] == resumed["momentum_devices"] == ["xla"]
        assert resumed["params"] == trained


def _assert_failure_raises_everywhere(results: dict[str, list[dict[str, Any]]]) -> None:
    writer, other = results["fail"]
    assert writer["error"]["type"] == "OSError" and "injected" in writer["error"]["message"]
    assert other["error"]["type"] == "DistributedCheckpointError"
    assert "failed on the writer rank (rank 0)" in other["error"]["message"]
    assert "injected" in other["error"]["message"]
    assert max(writer["seconds"], other["seconds"]) < 30


# --------------------------------------------------------------------------- xmp.spawn, ordinals as ranks


def test_spawn_ranks_are_the_xla_ordinals(spawn_run: tuple[Path, dict[str, list[dict[str, Any]]]]) -> None:
    _, results = spawn_run
    assert [r["ordinal"] for r in results["fit"]] == [0, 1]
    assert [r["context"] for r in results["fit"]] == ["XLAContext", "XLAContext"]


def test_spawn_only_the_master_ordinal_writes_and_the_ordinals_agree(
    spawn_run: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    _assert_one_writer_and_agreement(*spawn_run)


def test_spawn_every_ordinal_resumes_the_same_state_on_its_device(
    spawn_run: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    _assert_resume(spawn_run[1])


def test_spawn_a_failed_write_raises_on_every_ordinal(spawn_run: tuple[Path, dict[str, list[dict[str, Any]]]]) -> None:
    _assert_failure_raises_everywhere(spawn_run[1])


def test_spawn_ordinals_saving_different_paths_both_raise(
    spawn_run: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    workdir, results = spawn_run
    for result in results["mismatch"]:
        assert result["error"]["type"] == "DistributedCheckpointError"
        assert "out of step" in result["error"]["message"]
    assert not (workdir / "mismatch" / "rank0.ckpt").exists() and not (workdir / "mismatch" / "rank1.ckpt").exists()


def test_spawn_an_ordinal_that_never_arrives_is_reported_after_the_timeout(
    spawn_run: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    writer, _ = spawn_run[1]["timeout"]
    assert writer["error"]["type"] == "DistributedCheckpointError"
    assert f"waited {XLA_TIMEOUT} s for ordinal(s) 1" in writer["error"]["message"]
    assert XLA_TIMEOUT <= writer["seconds"] < XLA_TIMEOUT + 10


# --------------------------------------------------------------------------- torchrun + gloo alongside XLA


def test_gloo_ranks_come_from_the_process_group(gloo_run: tuple[Path, dict[str, list[dict[str, Any]]]]) -> None:
    _, results = gloo_run
    # PJRT on the CPU makes every process an XLA world of one (ordinal 0 in both): the process
    # group decides, the plugin supplies no context
    assert [r["ordinal"] for r in results["fit"]] == [0, 0]
    assert [r["context"] for r in results["fit"]] == ["NoneType", "NoneType"]


def test_gloo_only_rank_zero_writes_and_the_ranks_agree(gloo_run: tuple[Path, dict[str, list[dict[str, Any]]]]) -> None:
    _assert_one_writer_and_agreement(*gloo_run)


def test_gloo_every_rank_resumes_the_same_state_on_its_device(
    gloo_run: tuple[Path, dict[str, list[dict[str, Any]]]],
) -> None:
    _assert_resume(gloo_run[1])


def test_gloo_a_failed_write_raises_on_every_rank(gloo_run: tuple[Path, dict[str, list[dict[str, Any]]]]) -> None:
    _assert_failure_raises_everywhere(gloo_run[1])
