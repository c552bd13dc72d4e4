"""examples/s3_checkpoints.py against a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3_server import MotoServer

pytest.importorskip("s3fs")
pytest.importorskip("moto")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "s3_checkpoints.py"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


def env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CKPTHOOKS_", "AWS_"))},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=240, env=env(), check=False)


def test_s3_example_saves_resumes_and_the_cli_sees_it(moto: MotoServer) -> None:
    common = [sys.executable, str(EXAMPLE), "--endpoint-url", moto.endpoint, "--bucket", "examples"]
    first = run(*common, "--create-bucket", "--epochs", "2")
    assert first.returncode == 0, first.stderr
    assert "epoch 1:" in first.stdout and "resumed" not in first.stdout
    second = run(*common, "--epochs", "3")
    assert second.returncode == 0, second.stderr
    assert "epoch 0:" not in second.stdout and "epoch 2:" in second.stdout
    assert "resumed: restored model" in second.stdout and "optimizers" in second.stdout

    client = json.dumps({"endpoint_url": moto.endpoint, "region_name": "us-east-1"})
    options = ["-o", "key=testing", "-o", "secret=testing", "-o", f"client_kwargs={client}"]
    cli = str(BIN / "ckpthooks")
    listing = run(cli, "ls", "s3://examples/runs/s3-demo", "--json", *options)
    assert listing.returncode == 0, listing.stderr
    rows = json.loads(listing.stdout)["checkpoints"]
    assert any(row["name"].endswith("last.ckpt") and "last" in row["flags"] for row in rows)
    assert run(cli, "verify", "s3://examples/runs/s3-demo", *options).returncode == 0
