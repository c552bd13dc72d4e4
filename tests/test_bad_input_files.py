"""Bad checkpoint data files and command-line inputs (docs/bad-inputs.md, rows 19 on): each ends at
once with a typed ckpthooks error, never a hang, an endless read or a raw Python exception.

Every operation that would hang on a regression (a FIFO, a symlink to /dev/zero) runs in a child
process with a deadline, so a regression fails the test instead of stopping the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

import ckpthooks._catalog
from ckpthooks import Checkpointer
from ckpthooks._catalog import read_manifest, verify_checkpoint, write_manifest
from ckpthooks._manifest import Manifest, manifest_path
from tests.cli_helpers import run_cli
from tests.helpers import TinyNet

REPO = Path(__file__).resolve().parent.parent
#: Seconds an operation on a bad file may take before the test calls it a hang.
DEADLINE = 60

needs_fifos = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


def commit(path: Path) -> Path:
    Checkpointer(enable_checkpointing=False, save_rng_state=False).track(model=TinyNet()).save_checkpoint(path)
    return path


def assert_clean_failure(result: Result, *gists: str) -> str:
    """Exit code 1, one ``error:``/``FAILED`` line naming the typed error, no Python traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a raw exception
    assert "Traceback" not in result.output
    for gist in gists:
        assert gist in result.output, result.output
    return result.output


def run_with_deadline(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter at the repository root; a hang fails the test."""
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"still running after {DEADLINE} s (it blocks or reads forever): {code.strip()!r} {exc}")


# ---------------------------------------------------------------------- 7c: verify racing a pruning policy


def test_verify_skips_a_checkpoint_pruned_between_listing_and_verification(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = commit(tmp_path / "kept.ckpt")
    pruned = commit(tmp_path / "pruned.ckpt")
    listed = ckpthooks._catalog.iter_committed

    def listing_then_pruning(*args: Any, **kwargs: Any) -> Iterator[Any]:
        yield from listed(*args, **kwargs)
        # what a policy's pruning does right after the listing: manifest first, then the data
        os.remove(manifest_path(str(pruned)))
        os.remove(pruned)

    monkeypatch.setattr(ckpthooks._catalog, "iter_committed", listing_then_pruning)
    result = run_cli("verify", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "missing although its manifest commits it" not in result.output
    assert "removed while verifying" in result.output
    assert "1 ok, 0 failed, 1 removed while verifying" in result.output
    assert str(kept) in result.output

    commit(pruned)
    result = run_cli("verify", str(tmp_path), "--json")
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["removed"] == [str(pruned)]
    assert [record["path"] for record in report["results"]] == [str(kept)]


def test_verify_still_reports_data_missing_under_a_present_manifest(tmp_path: Path) -> None:
    commit(tmp_path / "a.ckpt")
    lost = commit(tmp_path / "lost.ckpt")
    os.remove(lost)  # its manifest stays: committed, but the bytes are gone
    result = run_cli("verify", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert "missing although its manifest commits it" in result.output
    assert "1 ok, 1 failed" in result.output and "removed while verifying" not in result.output


# ---------------------------------------------------------------------- 7g: a file name that is not UTF-8


def test_convert_to_safetensors_and_back_accepts_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """In a child process: the real command line, with stdout a pipe in a UTF-8 locale (and no log
    record naming the file reaches pytest-xdist, which cannot send such names between processes)."""
    pytest.importorskip("safetensors")
    done = run_with_deadline(
        f"""
        import os, subprocess, sys
        import torch
        from safetensors.torch import load
        from ckpthooks import Checkpointer
        from ckpthooks._catalog import verify_checkpoint
        from tests.helpers import TinyNet

        folder = {os.fsencode(tmp_path)!r}
        model = TinyNet()
        for raw in (b"ckpt-\\xff.ckpt", b"plain-\\xff.ckpt"):
            source = os.fsdecode(folder + b"/" + raw)
            if raw.startswith(b"ckpt"):
                checkpointer = Checkpointer(enable_checkpointing=False, save_rng_state=False)
                checkpointer.track(model=model).save_checkpoint(source)
            else:
                torch.save(model.state_dict(), source)  # a bare state dict without a manifest
            weights = os.fsdecode(folder + b"/weights-\\xfe-" + raw + b".safetensors")
            back = os.fsdecode(folder + b"/back-\\xfd-" + raw)
            cli = [sys.executable, "-m", "ckpthooks.cli", "convert"]
            env = dict(os.environ, LC_ALL="C.UTF-8", PYTHONIOENCODING="utf-8")
            for args in ([source, weights], [weights, back]):
                run = subprocess.run(cli + args, capture_output=True, env=env)
                print("EXIT", run.returncode, run.stdout.decode("ascii"), run.stderr.decode("ascii", "replace"))
            loaded = load(open(weights, "rb").read())
            print("WEIGHTS", all(torch.equal(loaded[k], v) for k, v in model.state_dict().items()))
            verify_checkpoint(back)
            restored = TinyNet.load_from_checkpoint(back)
            print("RESTORED", all(torch.equal(restored.state_dict()[k], v) for k, v in model.state_dict().items()))
        """
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("EXIT 0 wrote") == 4, out
    assert "weights-\\xfe-ckpt-\\xff.ckpt.safetensors" in out  # shown with the odd bytes escaped
    assert out.count("WEIGHTS True") == 2 and out.count("RESTORED True") == 2, out


# ---------------------------------------------------------------------- 7k: other untyped failures


def test_copy_refuses_a_manifest_with_an_unknown_checksum_algorithm(tmp_path: Path) -> None:
    source = commit(tmp_path / "a.ckpt")
    data = json.loads(Path(manifest_path(str(source))).read_text())
    data["algorithm"] = "sha999"
    Path(manifest_path(str(source))).write_text(json.dumps(data))
    result = run_cli("copy", str(source), str(tmp_path / "copy.ckpt"))
    assert_clean_failure(result, "IncompatibleFormatError", "'sha999'", "nothing was copied", "--overwrite")
    assert not (tmp_path / "copy.ckpt").exists()
    # the way out the message names: commit the file again, then it copies
    assert run_cli("convert", str(source), str(source), "--overwrite").exit_code == 0
    assert run_cli("copy", str(source), str(tmp_path / "copy.ckpt")).exit_code == 0
    verify_checkpoint(str(tmp_path / "copy.ckpt"))


def _safetensors(header: bytes, tail: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + tail


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_safetensors(b'{"w": {"dtype": 5}}'), id="wrong_types_in_header"),  # SafetensorError
        pytest.param(_safetensors(b'{"w": {"dtype": "F32", "shape": [4]'), id="header_not_json"),  # ScanError
        pytest.param(
            _safetensors(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', b"x" * 5),
            id="data_cut_short",
        ),
    ],
)
def test_convert_of_a_malformed_safetensors_file_is_a_corrupt_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    pytest.importorskip("safetensors")
    source = tmp_path / "bad.safetensors"
    source.write_bytes(content)
    result = run_cli("convert", str(source), str(tmp_path / "out.ckpt"))
    assert_clean_failure(result, "CorruptCheckpointError", "is not a readable safetensors file", "intact copy")
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("dst", ["out.safetensors", "out.ckpt"])
def test_convert_of_a_folder_checkpoint_is_a_configuration_error(tmp_path: Path, dst: str) -> None:
    folder = tmp_path / "sharded.ckpt"  # what torch.distributed.checkpoint writes: a folder of files
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"\x80\x04metadata")
    (folder / "__0_0.distcp").write_bytes(b"PK\x03\x04shard")
    result = run_cli("convert", str(folder), str(tmp_path / dst))
    assert_clean_failure(result, "ConfigurationError", "is a folder checkpoint", "ckpthooks copy")
    assert not (tmp_path / dst).exists()


# ---------------------------------------------------------------------- 7k: FIFOs and devices named like checkpoints


def _not_a_file(kind: str, folder: Path, *, committed: bool = False) -> Path:
    path = folder / "x.ckpt"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    if committed:  # a manifest beside it, as an attacker (or a mistaken mv) can leave
        write_manifest(
            str(path), Manifest(file="x.ckpt", size=0, checksum=None, algorithm=None, epoch=0, global_step=0)
        )
        assert read_manifest(str(path)) is not None
    return path


_KINDS = [
    pytest.param("fifo", id="fifo", marks=needs_fifos),
    pytest.param(
        "dev_zero",
        id="symlink_to_dev_zero",
        marks=pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero"),
    ),
]

_LOADS = {
    "restore": "Checkpointer(enable_checkpointing=False).track(model=TinyNet()).restore(PATH)",
    "restore_unsafe": (
        "Checkpointer(enable_checkpointing=False).track(model=TinyNet()).restore(PATH, weights_only=False)"
    ),
    "restore_unverified": "Checkpointer(enable_checkpointing=False, verify='off').track(model=TinyNet()).restore(PATH)",
    "load_from_checkpoint": "TinyNet.load_from_checkpoint(PATH)",
}


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize("committed", [False, True], ids=["no_manifest", "with_manifest"])
@pytest.mark.parametrize("call", sorted(_LOADS))
def test_loading_a_fifo_or_device_named_like_a_checkpoint_raises_at_once(
    tmp_path: Path, kind: str, committed: bool, call: str
) -> None:
    path = _not_a_file(kind, tmp_path, committed=committed)
    done = run_with_deadline(
        f"""
        from ckpthooks import Checkpointer, CorruptCheckpointError
        from tests.helpers import TinyNet
        PATH = {str(path)!r}
        try:
            {_LOADS[call]}
        except CorruptCheckpointError as exc:
            print("RAISED", exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "RAISED" in done.stdout, done.stdout + done.stderr
    if not committed:  # a manifest's size check may answer first ("has 0 bytes but ...")
        what = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
        assert f"is {what}, not a regular file" in done.stdout


@pytest.mark.parametrize("kind", _KINDS)
@pytest.mark.parametrize(
    "command",
    [["inspect"], ["convert", "OUT.safetensors"], ["convert", "OUT.ckpt"], ["verify", "--deep"]],
    ids=["inspect", "convert_to_safetensors", "convert_to_ckpt", "verify"],
)
def test_commands_refuse_a_fifo_or_device_named_like_a_checkpoint_at_once(
    tmp_path: Path, kind: str, command: list[str]
) -> None:
    path = _not_a_file(kind, tmp_path)
    name, *rest = command
    args = [name, str(path), *(str(tmp_path / arg) if arg.startswith("OUT") else arg for arg in rest)]
    done = run_with_deadline(
        f"""
        import sys
        from ckpthooks.cli import main
        sys.argv = ["ckpthooks", *{args!r}]
        main()
        """
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    if name != "verify":  # verify: "not a committed checkpoint", before any byte is read
        what = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
        assert f"is {what}, not a regular file" in done.stdout + done.stderr
    assert not list(tmp_path.glob("OUT*"))
