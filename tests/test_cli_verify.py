"""``ckpthooks verify``: one checkpoint or a whole folder, non-zero exit on any failure."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from ckpthooks import Checkpointer
from ckpthooks.cli import main


def committed(folder: Path, *names: str) -> list[Path]:
    ckpt = Checkpointer(folder, enable_checkpointing=False).track(model=torch.nn.Linear(4, 4))
    paths = [folder / name for name in names]
    for path in paths:
        ckpt.save_checkpoint(path)
    return paths


def flip_byte(path: Path, offset: int = 700) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_a_folder_of_intact_checkpoints_exits_zero(tmp_path: Path) -> None:
    committed(tmp_path, "a.ckpt", "sub/b.ckpt")
    result = CliRunner().invoke(main, ["verify", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)["results"]
    assert sorted(Path(r["path"]).name for r in records) == ["a.ckpt", "b.ckpt"]
    assert all(r["ok"] for r in records)


def test_verify_reports_a_flipped_byte_and_exits_one(tmp_path: Path) -> None:
    a, _ = committed(tmp_path, "a.ckpt", "b.ckpt")
    flip_byte(a)
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "checksum" in result.output and "1 ok, 1 failed" in result.output


def test_size_mode_misses_a_flipped_byte_but_not_truncation(tmp_path: Path) -> None:
    (a,) = committed(tmp_path, "a.ckpt")
    flip_byte(a)
    assert CliRunner().invoke(main, ["verify", str(a), "--mode", "size"]).exit_code == 0
    a.write_bytes(a.read_bytes()[:-10])
    result = CliRunner().invoke(main, ["verify", str(a), "--mode", "size"])
    assert result.exit_code == 1 and "bytes" in result.output


def test_verify_an_uncommitted_file_or_an_empty_folder_fails(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    assert CliRunner().invoke(main, ["verify", str(tmp_path / "plain.ckpt")]).exit_code == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["verify", str(empty)])
    assert result.exit_code == 1 and "no committed checkpoint" in result.output


def test_verify_accepts_the_manifest_path_and_deep_loads(tmp_path: Path) -> None:
    (a,) = committed(tmp_path, "a.ckpt")
    result = CliRunner().invoke(main, ["verify", f"{a}.manifest.json", "--deep"])
    assert result.exit_code == 0, result.output


def test_verify_a_folder_with_a_manifest_from_a_newer_ckpthooks_fails_cleanly(tmp_path: Path) -> None:
    (a,) = committed(tmp_path, "a.ckpt")
    manifest_file = Path(f"{a}.manifest.json")
    data = json.loads(manifest_file.read_text())
    data["manifest_version"] = 999
    manifest_file.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "IncompatibleFormatError" in result.output and "upgrade" in result.output.lower()


def test_verify_of_a_path_that_does_not_exist_says_so(tmp_path: Path) -> None:
    """It said "not a committed checkpoint (no valid .manifest.json beside it)"."""
    missing = tmp_path / "absent.ckpt"
    result = CliRunner().invoke(main, ["verify", str(missing)])
    assert result.exit_code == 1
    assert f"nothing at {missing}: no such file or folder" in result.output
    assert "manifest" not in result.output
    as_json = CliRunner().invoke(main, ["verify", str(missing), "--json"])
    assert as_json.exit_code == 1 and "no such file or folder" in json.loads(as_json.output)["note"]
