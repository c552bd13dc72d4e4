"""``ckpthooks ls``: committed checkpoints with step, metrics, size, age, best and last, from manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckpthooks import Checkpointer
from ckpthooks._cli.listing import Writer
from ckpthooks.testing.storage_contract import fresh_memory_url
from tests.cli_helpers import names, run_cli, run_json, train


def test_ls_marks_last_and_the_best_of_each_monitoring_policy(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.2, 0.4])
    listing = run_json("ls", str(tmp_path))
    rows = {Path(r["path"]).name: r for r in listing["checkpoints"]}
    assert set(rows) == {"epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"}
    assert rows["epoch=1-step=4.ckpt"]["flags"] == ["best(val_loss)"]
    assert rows["last.ckpt"]["flags"] == ["last"]
    assert Path(listing["last"]).name == "last.ckpt"
    assert [Path(p).name for p in listing["best"].values()] == ["epoch=1-step=4.ckpt"]
    assert rows["epoch=2-step=6.ckpt"]["metrics"] == {"val_loss": pytest.approx(0.4)}
    assert rows["epoch=2-step=6.ckpt"]["global_step"] == 6 and rows["epoch=2-step=6.ckpt"]["epoch"] == 2
    assert all(r["size"] > 0 and r["age_seconds"] >= 0 for r in rows.values())


def test_ls_text_has_one_row_per_checkpoint_with_human_sizes_and_ages(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.2])
    result = run_cli("ls", str(tmp_path))
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["name", "step", "epoch", "metrics", "size", "age", "flags"]
    assert len(rows) == 3
    best_row = next(row for row in rows if "epoch=1-step=4.ckpt" in row)
    assert "val_loss=0.2" in best_row and "KiB" in best_row and "s ago" in best_row and "best(val_loss)" in best_row
    assert rows[-1].startswith("checkpoints/last.ckpt") and rows[-1].endswith("last")


def test_ls_best_follows_the_mode_of_the_policy(tmp_path: Path) -> None:
    from ckpthooks import ModelCheckpoint

    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, callbacks=[ModelCheckpoint(monitor="acc", mode="max", save_top_k=-1)])
    ckpt.track(model=model)
    ckpt.fit_start()
    for epoch, acc in enumerate([0.6, 0.9, 0.7]):
        ckpt.epoch_start(epoch)
        ckpt.step_end()
        ckpt.log("acc", acc)
        ckpt.epoch_end()
    listing = run_json("ls", str(tmp_path))
    best = [r for r in listing["checkpoints"] if r["flags"] == ["best(acc)"]]
    assert names(best) == ["epoch=1-step=2.ckpt"]


def test_ls_monitor_option_ranks_any_logged_metric(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.2, 0.4], monitor=None, save_top_k=-1, save_last=False)
    listing = run_json("ls", str(tmp_path), "--monitor", "val_loss", "--mode", "max")
    flagged = [r for r in listing["checkpoints"] if "best(val_loss)" in r["flags"]]
    assert names(flagged) == ["epoch=0-step=2.ckpt"]
    assert list(listing["best"]) == ["--monitor val_loss --mode max"]


def test_ls_reads_manifests_only(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.2])
    for checkpoint in tmp_path.rglob("*.ckpt"):
        checkpoint.write_bytes(b"not a checkpoint any more")  # ls must not open these
    listing = run_json("ls", str(tmp_path))
    assert len(listing["checkpoints"]) == 3


def test_ls_skips_uncommitted_files(tmp_path: Path) -> None:
    train(tmp_path, [0.5])
    torch.save({"state_dict": {}}, tmp_path / "checkpoints" / "stray.ckpt")
    listing = run_json("ls", str(tmp_path))
    assert "stray.ckpt" not in names(listing["checkpoints"])


def test_ls_of_an_empty_folder_prints_a_note_and_exits_0(tmp_path: Path) -> None:
    result = run_cli("ls", str(tmp_path))
    assert result.exit_code == 0
    assert result.stdout == "" and "no committed checkpoint" in result.stderr
    assert run_json("ls", str(tmp_path))["checkpoints"] == []


def test_ls_of_a_missing_folder_exits_1(tmp_path: Path) -> None:
    result = run_cli("ls", str(tmp_path / "nope"))
    assert result.exit_code == 1
    assert "no folder" in result.stderr


def test_ls_lists_a_url(tmp_path: Path) -> None:
    with fresh_memory_url() as url:
        train(url, [0.3, 0.1])
        listing = run_json("ls", url)
        assert all(r["path"].startswith(url) for r in listing["checkpoints"])
        assert len(listing["checkpoints"]) == 3


def test_ls_storage_options_must_be_key_value(tmp_path: Path) -> None:
    result = run_cli("ls", str(tmp_path), "-o", "novalue")
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        ("ModelCheckpoint{'monitor': 'val_loss', 'mode': 'max'}#topk", ("topk", "val_loss", "max")),
        ("ModelCheckpoint{'monitor': None, 'mode': 'min', 'dirpath': 'x'}#last", ("last", None, "min")),
        ("MyPolicy#milestone", ("milestone", None, None)),
        ("ModelCheckpoint{__import__('os')}#topk", ("topk", None, None)),  # not a literal: never evaluated
        (None, None),
        ("no role", None),
    ],
)
def test_writer_names_are_parsed_without_evaluating_code(writer: str | None, expected: object) -> None:
    parsed = Writer.parse(writer)
    assert (None if parsed is None else (parsed.role, parsed.monitor, parsed.mode)) == expected


def test_ls_help_documents_last_best_and_exit_codes() -> None:
    result = run_cli("ls", "--help")
    assert result.exit_code == 0
    for text in ("--json", "--monitor", "--storage-option", "last", "best", "Exit code"):
        assert text in result.output
    json.dumps(result.output)
