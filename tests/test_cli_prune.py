"""``ckpthooks prune``: a dry run by default, --yes deletes, and the library's deletion guards hold."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ckpthooks import Checkpointer
from tests.cli_helpers import names, run_cli, run_json, train

LOSSES = [0.5, 0.2, 0.4, 0.3, 0.6]  # epochs 0..4; the best are epochs 1 (0.2) and 3 (0.3)


def ckpt_files(root: Path) -> list[str]:
    return sorted(path.name for path in root.rglob("*.ckpt"))


def manifests(root: Path) -> list[str]:
    return sorted(path.name for path in root.rglob("*.manifest.json"))


def test_prune_without_yes_is_a_dry_run(tmp_path: Path) -> None:
    train(tmp_path, LOSSES)
    before = ckpt_files(tmp_path)
    result = run_cli("prune", str(tmp_path), "--keep-top-k", "2", "--monitor", "val_loss")
    assert result.exit_code == 0, result.output
    assert "dry run: 2 of 6 checkpoints would be deleted" in result.stdout
    assert ckpt_files(tmp_path) == before


def test_prune_yes_keeps_the_k_best_the_newest_and_last(tmp_path: Path) -> None:
    train(tmp_path, LOSSES)
    report = run_json("prune", str(tmp_path), "--keep-top-k", "2", "--monitor", "val_loss", "--yes")
    assert report["dry_run"] is False and report["errors"] == []
    assert names(report["delete"]) == ["epoch=0-step=2.ckpt", "epoch=2-step=6.ckpt"]
    assert sorted(Path(p).name for p in report["deleted"]) == ["epoch=0-step=2.ckpt", "epoch=2-step=6.ckpt"]
    # epoch 4 is the worst but the newest: "last" would resume from it (or from last.ckpt, same step)
    assert ckpt_files(tmp_path) == ["epoch=1-step=4.ckpt", "epoch=3-step=8.ckpt", "epoch=4-step=10.ckpt", "last.ckpt"]
    assert manifests(tmp_path) == [f"{name}.manifest.json" for name in ckpt_files(tmp_path)]
    reasons = {Path(r["path"]).name: r["reason"] for r in report["keep"]}
    assert reasons["last.ckpt"] == reasons["epoch=4-step=10.ckpt"] == "at the newest step (last)"
    assert reasons["epoch=1-step=4.ckpt"] == "top 2"


def test_prune_max_mode_keeps_the_largest(tmp_path: Path) -> None:
    train(tmp_path, LOSSES)
    report = run_json("prune", str(tmp_path), "--keep-top-k", "1", "--monitor", "val_loss", "--mode", "max")
    assert names(report["delete"]) == ["epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "epoch=3-step=8.ckpt"]
    assert report["dry_run"] is True and report["deleted"] == []


def test_prune_never_deletes_files_saved_by_hand_or_without_the_metric(tmp_path: Path) -> None:
    train(tmp_path, LOSSES)
    manual = Checkpointer(tmp_path, enable_checkpointing=False).track(model=torch.nn.Linear(4, 2))
    manual.log("val_loss", 9.0)
    manual.save_checkpoint(tmp_path / "by-hand.ckpt")  # no writer in its manifest
    report = run_json("prune", str(tmp_path), "--keep-top-k", "0", "--monitor", "val_loss")
    deleted = names(report["delete"])
    assert "by-hand.ckpt" not in deleted and "last.ckpt" not in deleted and "epoch=4-step=10.ckpt" not in deleted
    reasons = {Path(r["path"]).name: r["reason"] for r in report["keep"]}
    assert reasons["by-hand.ckpt"] == "not written by a ckpthooks policy"
    refused = run_cli("prune", str(tmp_path), "--keep-top-k", "0", "--monitor", "accuracy", "--json")
    assert refused.exit_code == 1  # no manifest records it: a warning and a failure (see below)
    other = json.loads(refused.stdout)
    assert other["delete"] == []
    assert {r["reason"] for r in other["keep"]} >= {"no finite accuracy in its manifest"}


def test_prune_skips_a_checkpoint_whose_manifest_changed_since_the_listing(tmp_path: Path, monkeypatch) -> None:
    from ckpthooks._cli import prune

    train(tmp_path, LOSSES)
    real_plan = prune.plan

    def plan_then_rewrite(items, keep, monitor, mode, root=None):  # type: ignore[no-untyped-def]
        delete, kept = real_plan(items, keep, monitor, mode, root=root)
        victim = Path(delete[0].path)
        manifest = Path(f"{victim}.manifest.json")
        data = json.loads(manifest.read_text())
        data["created"] += 1  # another process committed a new version under the same name
        manifest.write_text(json.dumps(data))
        return delete, kept

    monkeypatch.setattr(prune, "plan", plan_then_rewrite)
    result = run_cli("prune", str(tmp_path), "--keep-top-k", "2", "--monitor", "val_loss", "--yes")
    assert result.exit_code == 1
    assert "changed since the listing" in result.stderr
    assert "epoch=0-step=2.ckpt" in ckpt_files(tmp_path)
    assert "epoch=2-step=6.ckpt" not in ckpt_files(tmp_path)


def test_prune_needs_keep_top_k_and_monitor() -> None:
    assert run_cli("prune", ".").exit_code == 2
    assert run_cli("prune", ".", "--keep-top-k", "-1", "--monitor", "x").exit_code == 2


def test_prune_a_missing_folder_exits_1(tmp_path: Path) -> None:
    result = run_cli("prune", str(tmp_path / "nope"), "--keep-top-k", "1", "--monitor", "val_loss")
    assert result.exit_code == 1 and "no folder" in result.stderr


def test_prune_help_documents_dry_run_guards_and_exit_codes() -> None:
    result = run_cli("prune", "--help")
    assert result.exit_code == 0
    for text in ("--yes", "dry run", "--keep-top-k", "--monitor", "--mode", "--json", "Exit code"):
        assert text in result.output


def test_a_monitor_no_manifest_records_warns_and_fails(tmp_path: Path) -> None:
    """A misspelt --monitor ("val_los") printed a quiet plan that deleted nothing and exited 0."""
    train(tmp_path, [0.5, 0.25, 0.1, 0.3])
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    result = run_cli("prune", str(tmp_path), "--monitor", "val_los", "--keep-top-k", "1", "--yes")
    assert result.exit_code == 1, result.output
    assert "records a finite 'val_los'" in result.stderr and "the manifests record: val_loss" in result.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # nothing deleted
    report = json.loads(run_cli("prune", str(tmp_path), "--monitor", "val_los", "--keep-top-k", "1", "--json").stdout)
    assert report["monitor_found"] is False and report["delete"] == []
    assert run_cli("prune", str(tmp_path), "--monitor", "val_loss", "--keep-top-k", "1").exit_code == 0
