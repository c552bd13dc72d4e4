"""Junk named like a manifest (docs/bad-inputs.md): a FIFO, a symlink to /dev/zero, a huge file,
JSON of the wrong shape, JSON nested thousands deep. None of them hangs, exhausts memory or ends
in a raw ``TypeError``/``RecursionError``: listing and resolving "last" skip it with a warning (one
junk file never blocks a folder), an explicitly named checkpoint is a typed error at once.

Each kind runs every operation in one child process with a deadline, so a regression that blocks
fails the test instead of stopping the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ckpthooks import Checkpointer, ModelCheckpoint
from ckpthooks._manifest import MAX_MANIFEST_BYTES, Manifest, manifest_path, parse_manifest
from tests.helpers import TinyNet

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 90


def _valid_fields(**changes: Any) -> dict[str, Any]:
    manifest = Manifest(file="bad.ckpt", size=10, checksum=None, algorithm=None, epoch=1, global_step=99)
    good = json.loads(manifest.to_json())
    good.update(changes)
    return good


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: kind -> what to put at bad.ckpt.manifest.json (bytes), or a special file
_JUNK: dict[str, Any] = {
    "fifo": "fifo",
    "dev_zero": "dev_zero",
    "huge": json.dumps(_valid_fields(extra={"pad": "x" * (MAX_MANIFEST_BYTES + 10)})).encode(),
    "json_string": b'"a string where an object belongs"',
    "json_list": b"[1, 2, 3]",
    "size_as_string": json.dumps(_valid_fields(size="10")).encode(),
    "step_as_float": json.dumps(_valid_fields(global_step=99.5)).encode(),
    "metrics_as_list": json.dumps(_valid_fields(metrics=[1, 2])).encode(),
    "file_as_number": json.dumps(_valid_fields(file=7)).encode(),
    "missing_fields": json.dumps({"format": "ckpthooks.manifest", "manifest_version": 1, "file": "bad.ckpt"}).encode(),
    "nested_deep": (
        json.dumps(_valid_fields(extra={"x": 0}))[:-1] + ', "extra": {"deep": ' + _nested(100_000) + "}}"
    ).encode(),
    "nested_in_extra": json.dumps(_valid_fields(extra={"a": json.loads(_nested(200))})).encode(),
    "not_utf8": b"\xff\xfe\x00junk",
}


def _folder(tmp_path: Path, kind: str) -> Path:
    """``root/checkpoints``: good.ckpt committed at step 5, bad.ckpt with junk as its manifest."""
    root = tmp_path / "run"
    folder = root / "checkpoints"
    ckpt = Checkpointer(root, callbacks=[ModelCheckpoint(dirpath=folder, save_top_k=-1)]).track(model=TinyNet())
    ckpt.progress.global_step = 5
    ckpt.log("loss", 0.5)
    ckpt.save_checkpoint(folder / "good.ckpt")
    ckpt.progress.global_step = 99
    ckpt.save_checkpoint(folder / "bad.ckpt")  # a real checkpoint; only its manifest is junk
    target = Path(manifest_path(str(folder / "bad.ckpt")))
    target.unlink()
    junk = _JUNK[kind]
    if junk == "fifo":
        os.mkfifo(target)
    elif junk == "dev_zero":
        os.symlink("/dev/zero", target)
    else:
        target.write_bytes(junk)
    # a commit index line for bad.ckpt would answer before the file: drop the index
    for index in folder.glob(".ckpthooks-index*"):
        index.unlink()
    return root


_WORKER = """
import json, sys, logging
from click.testing import CliRunner
from ckpthooks import Checkpointer, CheckpointError, ModelCheckpoint
from ckpthooks.cli import main
from tests.helpers import TinyNet

root, folder = sys.argv[1], sys.argv[1] + "/checkpoints"
good, bad = folder + "/good.ckpt", folder + "/bad.ckpt"
results = {}

def cli(*args):
    result = CliRunner().invoke(main, list(args))
    return {"code": result.exit_code, "raw": None if isinstance(result.exception, (SystemExit, type(None)))
            else type(result.exception).__name__, "output": result.output}

def call(fn):
    try:
        return {"value": fn()}
    except CheckpointError as exc:
        return {"typed": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:
        return {"raw": type(exc).__name__, "message": str(exc)}

def fresh():
    return Checkpointer(root, callbacks=[ModelCheckpoint(dirpath=folder, save_top_k=-1)]).track(model=TinyNet())

results["ls"] = cli("ls", root, "--json")
results["verify_root"] = cli("verify", root)
results["prune"] = cli("prune", root, "--keep-top-k", "1", "--monitor", "loss", "--json")
results["inspect_bad"] = cli("inspect", bad)
results["verify_bad"] = cli("verify", bad)
results["copy_bad"] = cli("copy", bad, root + "/copied.ckpt")
results["last"] = call(lambda: fresh().find_checkpoint("last"))
results["restore_last"] = call(lambda: fresh().restore("last").path)
results["restore_bad"] = call(lambda: fresh().restore(bad).path)
results["load_from_checkpoint_bad"] = call(lambda: type(TinyNet.load_from_checkpoint(bad)).__name__)
print("RESULTS" + json.dumps(results))
"""


def _run(root: Path) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_WORKER), str(root)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {DEADLINE} s (it blocks or reads forever): {exc}")
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULTS"))
    results: dict[str, Any] = json.loads(line[len("RESULTS") :])
    results["stderr"] = done.stderr
    return results


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("kind", sorted(_JUNK))
def test_a_junk_manifest_is_skipped_when_listing_and_a_typed_error_when_named(tmp_path: Path, kind: str) -> None:
    root = _folder(tmp_path, kind)
    good = str(root / "checkpoints" / "good.ckpt")
    bad = str(root / "checkpoints" / "bad.ckpt")
    results = _run(root)
    # listing and resolving "last": the junk is skipped, the good checkpoint is found
    ls = results["ls"]
    assert ls["code"] == 0 and ls["raw"] is None, ls
    listing = json.loads(ls["output"][ls["output"].index("{") :])
    assert [c["path"] for c in listing["checkpoints"]] == [good] and listing["last"] == good
    assert results["verify_root"]["code"] == 0, results["verify_root"]
    assert results["prune"]["code"] == 0 and results["prune"]["raw"] is None, results["prune"]
    assert results["last"] == {"value": good}
    assert results["restore_last"] == {"value": good}
    assert "ignoring unreadable manifest" in results["stderr"] and f"{bad}.manifest.json" in results["stderr"]
    # named explicitly: a typed error at once, no traceback
    for command in ("inspect_bad", "verify_bad", "copy_bad"):
        outcome = results[command]
        assert outcome["code"] == 1 and outcome["raw"] is None, (command, outcome)
        assert "Traceback" not in outcome["output"]
        assert "not a valid ckpthooks manifest" in outcome["output"], (command, outcome)
    for call in ("restore_bad", "load_from_checkpoint_bad"):
        outcome = results[call]
        assert outcome.get("typed") == "CorruptCheckpointError", (call, outcome)
        assert "not a valid ckpthooks manifest" in outcome["message"], (call, outcome)
    assert not (root / "copied.ckpt").exists()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'"text"', "not a ckpthooks manifest"),
        (json.dumps(_valid_fields(size="10")).encode(), "'size' must be a whole number"),
        (json.dumps(_valid_fields(size=-1)).encode(), "'size' must be a whole number"),
        (json.dumps(_valid_fields(weights_only="no")).encode(), "'weights_only' must be true or false"),
        (json.dumps(_valid_fields(metrics={"loss": "low"})).encode(), "'metrics' must map metric names to numbers"),
        (json.dumps(_valid_fields(plugins=[])).encode(), "'plugins' must map plugin names"),
        (json.dumps(_valid_fields(created=None)).encode(), "'created' must be a number"),
        (json.dumps(_valid_fields(file="")).encode(), "'file' is empty"),
        (_JUNK["nested_deep"], "nested too deep"),
        (_JUNK["nested_in_extra"], "nested more than"),
        (_JUNK["huge"], "larger than"),
        (_JUNK["not_utf8"], "not UTF-8"),
    ],
)
def test_parsing_names_what_is_wrong_with_a_manifest(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        parse_manifest(data)


def test_a_valid_manifest_still_parses_with_every_field() -> None:
    manifest = Manifest(
        file="a.ckpt", size=3, checksum="ab", algorithm="xxh3_64", epoch=1, global_step=2,
        metrics={"loss": 0.5, "acc": 1}, weights_only=True, writer="ModelCheckpoint{}#topk",
        plugins={"x": None, "y": "1.0"}, extra={"nested": {"ok": [1, 2]}},
    )  # fmt: skip
    assert parse_manifest(manifest.to_json().encode()) == manifest
