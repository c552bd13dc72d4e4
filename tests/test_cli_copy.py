"""``ckpthooks copy``: committed checkpoints copied with their manifests, checked while they stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ckpthooks import CheckpointIOSpec, TorchCheckpointIO, hookimpl
from ckpthooks._catalog import read_manifest, verify_checkpoint
from ckpthooks.testing.storage_contract import fresh_memory_url
from tests.cli_helpers import run_cli, run_json, train


def test_copy_one_checkpoint_into_a_folder(tmp_path: Path) -> None:
    train(tmp_path / "run", [0.5, 0.2])
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (tmp_path / "backup").mkdir()
    result = run_cli("copy", str(source), str(tmp_path / "backup"))
    assert result.exit_code == 0, result.output
    copied = tmp_path / "backup" / "last.ckpt"
    assert copied.read_bytes() == source.read_bytes()
    original, manifest = read_manifest(str(source)), verify_checkpoint(str(copied))
    assert original is not None
    assert (manifest.global_step, manifest.metrics, manifest.checksum) == (
        original.global_step,
        original.metrics,
        original.checksum,
    )
    assert manifest.writer == original.writer


def test_copy_a_folder_to_a_url_keeps_the_layout(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.2, 0.3])
    with fresh_memory_url() as url:
        report = run_json("copy", str(tmp_path), f"{url}/backup")
        assert all(r["ok"] for r in report["results"]) and len(report["results"]) == 4
        listing = run_json("ls", f"{url}/backup")
        assert sorted(r["name"] for r in listing["checkpoints"]) == sorted(
            f"checkpoints/{p.name}" for p in (tmp_path / "checkpoints").glob("*.ckpt")
        )
        assert run_cli("verify", f"{url}/backup").exit_code == 0


def test_a_source_changed_after_its_commit_is_not_copied(tmp_path: Path) -> None:
    train(tmp_path / "run", [0.5])
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    data = bytearray(source.read_bytes())
    data[500] ^= 0xFF
    source.write_bytes(bytes(data))
    result = run_cli("copy", str(source), str(tmp_path / "copy.ckpt"))
    assert result.exit_code == 1
    assert "checksum" in result.output
    assert not (tmp_path / "copy.ckpt").exists()
    assert not list(tmp_path.glob(".copy.ckpt*"))  # no temporary file left behind


def test_copy_refuses_an_uncommitted_source_and_an_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "plain.ckpt").write_bytes(b"PK\x03\x04 not committed")
    result = run_cli("copy", str(tmp_path / "plain.ckpt"), str(tmp_path / "x.ckpt"))
    assert result.exit_code == 1 and "convert" in result.stderr
    train(tmp_path / "run", [0.5])
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert run_cli("copy", str(source), str(tmp_path / "x.ckpt")).exit_code == 0
    again = run_cli("copy", str(source), str(tmp_path / "x.ckpt"))
    assert again.exit_code == 1 and "--overwrite" in again.output
    assert run_cli("copy", str(source), str(tmp_path / "x.ckpt"), "--overwrite").exit_code == 0


def test_copy_progress_goes_to_stderr_and_never_into_json(tmp_path: Path) -> None:
    train(tmp_path / "run", [0.5])
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    result = run_cli("copy", str(source), str(tmp_path / "c.ckpt"), "--json", "--progress")
    assert result.exit_code == 0, result.output
    assert "copying" in result.stderr
    assert json.loads(result.stdout)["results"][0]["ok"] is True
    quiet = run_cli("copy", str(source), str(tmp_path / "d.ckpt"), "--json")
    assert quiet.stderr == ""


# ---------------------------------------------------------------------- copy commits through the store


def test_a_failed_overwrite_by_copy_leaves_the_destination_committed(tmp_path: Path) -> None:
    train(tmp_path / "a", [0.5])
    train(tmp_path / "b", [0.4, 0.3])
    target = tmp_path / "a" / "checkpoints" / "last.ckpt"
    before = read_manifest(str(target))
    source = tmp_path / "b" / "checkpoints" / "last.ckpt"
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the source changed after its commit: the copy fails while it streams
    source.write_bytes(bytes(data))
    result = run_cli("copy", str(source), str(target), "--overwrite")
    assert result.exit_code == 1 and "checksum" in result.output, result.output
    assert read_manifest(str(target)) == before  # the old version is committed again
    verify_checkpoint(str(target))
    assert not list(target.parent.glob(".last.ckpt*"))  # no temporary or kept version left behind


def test_an_overwrite_by_copy_keeps_the_old_version_committed_until_the_copy_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpthooks import _commit as store_module

    train(tmp_path / "a", [0.5])
    train(tmp_path / "b", [0.4, 0.3])
    target = tmp_path / "a" / "checkpoints" / "last.ckpt"
    source = tmp_path / "b" / "checkpoints" / "last.ckpt"
    seen: list[str | None] = []
    real_write = store_module.write_manifest

    def write_manifest(path: str, *args: object, **kwargs: object) -> str:
        if path == str(target):  # the moment of the commit: what would "last" resume from now?
            kept = read_manifest(str(target.parent / ".last.ckpt.ckpthooks-prev"))
            seen.append(kept.file if kept is not None else None)
        return real_write(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module, "write_manifest", write_manifest)
    result = run_cli("copy", str(source), str(target), "--overwrite")
    assert result.exit_code == 0, result.output
    assert seen == [".last.ckpt.ckpthooks-prev"]  # the old version stayed committed while the copy streamed
    assert read_manifest(str(target)) == read_manifest(str(source))  # same fields, the copy's own file name
    assert not (target.parent / ".last.ckpt.ckpthooks-prev").exists()


class RecordingIO(TorchCheckpointIO):
    """A backend for memory:// that writes copied bytes itself and records them."""

    writes: list[str] = []

    def write_bytes(self, path: str, serialize: Any, storage_options: Any = None, *, checksum_algorithm: Any = None):
        RecordingIO.writes.append(path)
        return None  # then ckpthooks writes them durably, as the default does


def test_copy_writes_through_the_destinations_backend(tmp_path: Path, register_plugin: Any) -> None:
    class Plugin:
        @hookimpl
        def register_checkpoint_io(self) -> list[CheckpointIOSpec]:
            return [CheckpointIOSpec(name="recording", protocols=("memory",), factory=RecordingIO, priority=10)]

    register_plugin(Plugin(), "recording")
    RecordingIO.writes = []
    train(tmp_path / "run", [0.5])
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with fresh_memory_url() as url:
        result = run_cli("copy", str(source), f"{url}/last.ckpt")
        assert result.exit_code == 0, result.output
        assert RecordingIO.writes == [f"{url}/last.ckpt"]
        assert verify_checkpoint(f"{url}/last.ckpt").global_step == read_manifest(str(source)).global_step  # type: ignore[union-attr]


def test_copy_and_convert_write_through_the_write_checkpoint_bytes_hook(tmp_path: Path, register_plugin: Any) -> None:
    """The example of docs/hooks.md (``write_checkpoint_bytes``): a plugin that counts the bytes
    copies and conversions write, and leaves the writing to the next implementation."""
    import importlib.util

    example = _hook_example("write_checkpoint_bytes")
    spec = importlib.util.spec_from_loader("bytes_counter", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(example, "docs/hooks.md", "exec"), module.__dict__)
    register_plugin(module, "bytes-counter")
    train(tmp_path / "run", [0.5])
    source = tmp_path / "run" / "checkpoints" / "last.ckpt"

    result = run_cli("copy", str(source), str(tmp_path / "copy.ckpt"))
    assert result.exit_code == 0, result.output
    assert {str(tmp_path / "copy.ckpt"): source.stat().st_size} == module.WRITTEN
    verify_checkpoint(str(tmp_path / "copy.ckpt"))

    result = run_cli("convert", str(source), str(tmp_path / "converted.ckpt"))
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "converted.ckpt") in module.WRITTEN
    verify_checkpoint(str(tmp_path / "converted.ckpt"))


def _hook_example(hook: str) -> str:
    """The Python example of the ``hook`` section of docs/hooks.md (its second code block)."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "hooks.md").read_text()
    section = text.split(f"## `{hook}`", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)[1]
