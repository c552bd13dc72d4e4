"""A training run whose checkpoints live in a SQLite database: interrupted by SIGKILL, resumed
from "last" and "best", pruned to the top k, and handled by `ckpthooks ls`, `verify`, `copy` and
`prune`. The outcomes are read from the database table itself, not only through the filesystem."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckpthooks.plugin import cli_main as main

sys.path.insert(0, str(Path(__file__).parent))
from train import make, train

HERE = Path(__file__).parent


def checkpoint_rows(database: Path, root: str) -> list[str]:
    """The checkpoint files (no manifests) the table holds below ``root``."""
    prefix = root.removeprefix("sqlblob://") + "/"
    with sqlite3.connect(database) as db:
        names = [path for (path,) in db.execute("SELECT path FROM blobs ORDER BY path")]
    return [name[len(prefix) :] for name in names if name.startswith(prefix) and name.endswith(".ckpt")]


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def interrupted_and_resumed(database: Path, options: dict[str, str], root: str) -> dict[str, Any]:
    killed = subprocess.run(
        [sys.executable, str(HERE / "train.py"), root, str(database), "3"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr  # SIGKILL at the start of epoch 3
    after_kill = checkpoint_rows(database, root)
    resumed: dict[int, dict[str, torch.Tensor]] = {}
    _, model = train(root, options, ckpt_path="last", snapshots=resumed)
    reference: dict[int, dict[str, torch.Tensor]] = {}
    train(f"{root}-reference", options, ckpt_path=None, snapshots=reference)
    return {"after_kill": after_kill, "resumed": resumed, "reference": reference, "model": model}


def test_a_killed_run_resumes_from_last_exactly_and_prunes_to_the_top_k(
    interrupted_and_resumed: dict[str, Any], database: Path, root: str
) -> None:
    run = interrupted_and_resumed
    # killed at the start of epoch 3: epochs 1 (0.2) and 2 (0.4) are the top 2, plus last
    assert run["after_kill"] == [
        "checkpoints/epoch=1-step=6.ckpt", "checkpoints/epoch=2-step=9.ckpt", "checkpoints/last.ckpt",
    ]  # fmt: skip
    assert sorted(run["resumed"]) == [3, 4]  # the resumed run trained only what was left
    assert equal_weights(run["model"].state_dict(), run["reference"][4])  # as if never interrupted
    # epoch 3 (0.1) displaced epoch 2 (0.4); epoch 4 (0.3) did not enter the top 2
    assert checkpoint_rows(database, root) == [
        "checkpoints/epoch=1-step=6.ckpt", "checkpoints/epoch=3-step=12.ckpt", "checkpoints/last.ckpt",
    ]  # fmt: skip
    assert checkpoint_rows(database, f"{root}-reference") == checkpoint_rows(database, root)


def test_resume_from_best_restores_the_best_epochs_state(
    interrupted_and_resumed: dict[str, Any], options: dict[str, str], root: str
) -> None:
    ckpt, model = make(root, options)
    assert ckpt.find_checkpoint("best") == f"{root}/checkpoints/epoch=3-step=12.ckpt"
    report = ckpt.restore("best")
    assert report is not None and report.global_step == 12
    assert equal_weights(model.state_dict(), interrupted_and_resumed["reference"][3])
    ckpt.close()


def test_the_cli_lists_verifies_copies_and_prunes_in_the_database(
    interrupted_and_resumed: dict[str, Any], database: Path, options: dict[str, str], root: str, tmp_path: Path
) -> None:
    option = f"database={database}"
    listing = json.loads(cli("ls", root, "-o", option, "--json").stdout)
    names = {c["name"]: c["flags"] for c in listing["checkpoints"]}
    assert names == {
        "checkpoints/epoch=1-step=6.ckpt": [],
        "checkpoints/epoch=3-step=12.ckpt": ["best(val_loss)"],
        "checkpoints/last.ckpt": ["last"],
    }
    assert "3 ok, 0 failed" in cli("verify", root, "-o", option).stdout

    # sqlblob -> local folder, then local -> another place in the database
    backup = tmp_path / "backup"
    cli("copy", root, str(backup), "--src-option", option)
    copies = sorted(p.name for p in backup.rglob("*.ckpt"))
    assert copies == ["epoch=1-step=6.ckpt", "epoch=3-step=12.ckpt", "last.ckpt"]
    cli("copy", str(backup / "checkpoints" / "last.ckpt"), f"{root}-copy/last.ckpt", "--dst-option", option)
    key = root.removeprefix("sqlblob://")
    with sqlite3.connect(database) as db:
        copied = dict(db.execute("SELECT path, data FROM blobs WHERE path LIKE ?", (f"{key}-copy/%",)))
        (original,) = db.execute("SELECT data FROM blobs WHERE path = ?", (f"{key}/checkpoints/last.ckpt",))
    assert set(copied) == {f"{key}-copy/last.ckpt", f"{key}-copy/last.ckpt.manifest.json"}
    assert copied[f"{key}-copy/last.ckpt"] == original[0]
    assert "1 ok, 0 failed" in cli("verify", f"{root}-copy/last.ckpt", "-o", option).stdout

    pruning = cli("prune", root, "--keep-top-k", "1", "--monitor", "val_loss", "--yes", "-o", option, "--json")
    pruned = json.loads(pruning.stdout)
    assert [Path(p).name for p in pruned["deleted"]] == ["epoch=1-step=6.ckpt"]
    assert checkpoint_rows(database, root) == ["checkpoints/epoch=3-step=12.ckpt", "checkpoints/last.ckpt"]
    with sqlite3.connect(database) as db:
        left = [p for (p,) in db.execute("SELECT path FROM blobs WHERE path LIKE ?", (f"{key}/%epoch=1-step=6%",))]
    assert left == []  # the manifest went too
