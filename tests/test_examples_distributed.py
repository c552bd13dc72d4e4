"""The distributed examples run under torchrun (2 CPU processes, gloo), resume, and reshard."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DCP_PLUGIN = REPO / "plugins" / "ckpthooks-dcp"
TIMEOUT = 240  # a run takes seconds; a hang fails the test instead of blocking the suite


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the sharded example imports the ckpthooks-dcp plugin, which may not be installed
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(DCP_PLUGIN), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
        cwd=REPO,
        check=False,
    )


def digest(output: str) -> str:
    found = re.findall(r"weights sha256 ([0-9a-f]{64})", output)
    assert found, output
    return found[-1]


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_example_resumes_under_torchrun(tmp_path: Path) -> None:
    def run(root: str, epochs: int, summary: str) -> subprocess.CompletedProcess[str]:
        return torchrun(
            "ddp_torchrun.py", "--quick", "--root", str(tmp_path / root), "--epochs", str(epochs),
            "--summary", str(tmp_path / summary),
        )  # fmt: skip

    first = run("a", 1, "first.json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "epoch 0:" in first.stdout and "resumed" not in first.stdout
    second = run("a", 2, "resumed.json")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "epoch 0:" not in second.stdout and "epoch 1:" in second.stdout
    assert "resumed: restored model" in second.stdout
    # every line printed once: rank_zero_only printing, rank 0 writing
    assert second.stdout.count("epoch 1:") == 1
    folder = tmp_path / "a" / "checkpoints"
    assert sorted(os.listdir(folder)) == sorted(
        [f"{name}{suffix}" for name in ("epoch=0-step=7.ckpt", "epoch=1-step=14.ckpt", "last.ckpt")
         for suffix in ("", ".manifest.json")]
    )  # fmt: skip
    summary = json.loads((tmp_path / "resumed.json").read_text())
    assert summary["global_step"] == 14 and len(summary["weights_sha256"]) == 64
    assert (tmp_path / "a" / "final.ckpt.manifest.json").exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_sharded_example_resumes_on_two_ranks_and_consolidates_in_one_process(tmp_path: Path) -> None:
    root = str(tmp_path / "run")
    first = torchrun("sharded_fsdp2.py", "--quick", "--root", root, "--epochs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    second = torchrun("sharded_fsdp2.py", "--quick", "--root", root, "--epochs", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed: restored model" in second.stdout and "global step 4" in second.stdout
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert sorted(os.listdir(last)) == [".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard file per rank
    single = subprocess.run(
        [sys.executable, str(EXAMPLES / "sharded_fsdp2.py"), "--root", root, "--consolidate", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_env(),
        cwd=REPO,
        check=False,
    )
    assert single.returncode == 0, single.stdout + single.stderr
    assert "global step 8" in single.stdout
    assert digest(single.stdout) == digest(second.stdout)  # 2 shards -> 1 process, bit for bit
    assert (tmp_path / "m.pt").exists()
