"""Bad inputs: one test per row of docs/bad-inputs.md.

Each test asserts the exception (and the gist of its message) and that the failed operation changed
nothing: the folder listing and every file's bytes are the same afterwards, and a failed restore left
the model as it was.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckpthooks import (
    Callback,
    Checkpointer,
    CheckpointNotFoundError,
    ConfigurationError,
    CorruptCheckpointError,
    IncompatibleFormatError,
    IncompatibleStateError,
    MissingStateError,
    ModelCheckpoint,
    StorageError,
    UnsafeCheckpointError,
)
from ckpthooks._catalog import verify_checkpoint, write_manifest
from ckpthooks._io import durable
from ckpthooks._io.hashing import hash_stream
from ckpthooks._manifest import MANIFEST_VERSION, Manifest, manifest_path
from ckpthooks._version import FORMAT_VERSION
from ckpthooks.cli import main
from tests.helpers import TinyNet

# ---------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "ckpts"
    path.mkdir()
    return path


@pytest.fixture
def unchanged(tmp_path: Path) -> Iterator[Any]:
    """``with unchanged():`` asserts that the block changed no file under ``tmp_path``."""

    @contextmanager
    def check() -> Iterator[None]:
        before = snapshot(tmp_path)
        yield
        assert snapshot(tmp_path) == before

    yield check


def patterned_model(**kwargs: Any) -> TinyNet:
    """A TinyNet whose parameters are distinct, recognizable values."""
    model = TinyNet(**kwargs)
    with torch.no_grad():
        for index, parameter in enumerate(model.parameters()):
            parameter.copy_(torch.arange(parameter.numel(), dtype=torch.float32).reshape(parameter.shape) + index)
    return model


def fresh(model: TinyNet | None = None, **track: Any) -> Checkpointer:
    checkpointer = Checkpointer(enable_checkpointing=False, save_rng_state=False)
    return checkpointer.track(model=model or TinyNet(), **track)


def commit(path: Path, model: TinyNet | None = None) -> Path:
    """Save a committed (manifest-backed) checkpoint of ``model``."""
    fresh(model or patterned_model()).save_checkpoint(path)
    return path


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> bool:
    current = model.state_dict()
    return current.keys() == expected.keys() and all(torch.equal(current[k], expected[k]) for k in expected)


def forge_manifest(path: Path, **changes: Any) -> None:
    """Write a manifest that matches ``path``'s bytes (what an attacker with write access can do)."""
    data = path.read_bytes()
    size, digest = hash_stream([data], "crc32")
    manifest = Manifest(file=path.name, size=size, checksum=digest, algorithm="crc32", epoch=0, global_step=0)
    for key, value in changes.items():
        setattr(manifest, key, value)
    write_manifest(str(path), manifest)


def flip_tensor_byte(path: Path, tensor: torch.Tensor) -> None:
    """Flip one byte inside ``tensor``'s stored data in the file at ``path``."""
    data = bytearray(path.read_bytes())
    raw = tensor.detach().contiguous().numpy().tobytes()
    offset = bytes(data).find(raw)
    assert offset > 0 and bytes(data).find(raw, offset + 1) < 0, "tensor data not found exactly once"
    data[offset + 5] ^= 0xFF  # inside the second float32
    path.write_bytes(bytes(data))


def restore_raises(path: Path, error: type[BaseException], match: str, **track: Any) -> BaseException:
    """Restore ``path`` into a fresh model; assert it raises and leaves the model as it was."""
    model = TinyNet()
    before = state(model)
    with pytest.raises(error, match=match) as info:
        fresh(model, **track).restore(path)
    assert same_state(model, before)
    return info.value


# ---------------------------------------------------------------------- rows


def test_empty_file(folder: Path, unchanged: Any) -> None:
    path = folder / "empty.ckpt"
    path.write_bytes(b"")
    with unchanged():
        restore_raises(path, CorruptCheckpointError, r"not a readable checkpoint \(the file is empty\)")
        with pytest.raises(CorruptCheckpointError, match="may be truncated"):
            TinyNet.load_from_checkpoint(path)


def test_truncated_committed(folder: Path, unchanged: Any) -> None:
    path = commit(folder / "a.ckpt")
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])
    with unchanged():
        restore_raises(path, CorruptCheckpointError, f"has {size // 2} bytes but its manifest records {size}")
        with pytest.raises(CorruptCheckpointError, match="truncated or replaced after it was committed"):
            verify_checkpoint(str(path))


def test_truncated_plain(folder: Path, unchanged: Any) -> None:
    path = folder / "lightning.ckpt"
    torch.save({"epoch": 1, "global_step": 5, "state_dict": patterned_model().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:-200])
    with unchanged():
        restore_raises(path, CorruptCheckpointError, "not a readable checkpoint .*PytorchStreamReader")


def test_random_bytes(folder: Path, unchanged: Any) -> None:
    path = folder / "random.ckpt"
    path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(4096)))
    with unchanged():
        restore_raises(path, CorruptCheckpointError, "not a readable checkpoint .*of another file type")


def test_flipped_byte_committed(folder: Path, unchanged: Any) -> None:
    model = patterned_model()
    path = commit(folder / "a.ckpt", model)
    flip_tensor_byte(path, model.l1.weight)
    with unchanged():
        gist = "fails its .* checksum .* its bytes changed after it was committed"
        restore_raises(path, CorruptCheckpointError, gist)
        with pytest.raises(CorruptCheckpointError, match="checksum"):
            TinyNet.load_from_checkpoint(path)


def test_flipped_byte_plain(folder: Path, unchanged: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Honest: without a manifest nothing can tell; the file loads with one altered value."""
    saved = patterned_model()
    path = folder / "plain.ckpt"
    torch.save({"epoch": 1, "global_step": 5, "state_dict": saved.state_dict()}, path)
    flip_tensor_byte(path, saved.l1.weight)
    model = TinyNet()
    with unchanged():
        report = fresh(model).restore(path)
    assert report is not None and "model" in report.restored
    assert "has no ckpthooks manifest; loading it without verification" in caplog.text
    differs = model.l1.weight != saved.l1.weight
    assert int(differs.sum()) == 1 and bool(differs.view(-1)[1])  # exactly the flipped float
    assert torch.equal(model.l2.weight, saved.l2.weight)


class _Malicious:
    """Unpickling it calls ``open(marker, "w")``: code that runs on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (builtins.open, (self.marker, "w"))


def test_malicious_pickle(folder: Path, tmp_path: Path, unchanged: Any) -> None:
    marker = tmp_path / "PWNED"
    path = folder / "evil.ckpt"
    torch.save({"epoch": 0, "global_step": 0, "state_dict": TinyNet().state_dict(), "x": _Malicious(marker)}, path)
    forge_manifest(path)  # verifies, so that every path reaches the unpickling
    # the payload is live: an unsafe load does create the marker
    torch.load(io.BytesIO(path.read_bytes()), weights_only=False)["x"].close()
    assert marker.exists()
    marker.unlink()
    with unchanged():
        error = restore_raises(path, UnsafeCheckpointError, "cannot be loaded safely")
        assert "io.open" in str(error) and "weights_only=False" in str(error)
        with pytest.raises(UnsafeCheckpointError, match="cannot be loaded safely"):
            TinyNet.load_from_checkpoint(path)
        result = CliRunner().invoke(main, ["verify", str(path), "--deep", "--json"])
    assert result.exit_code == 1, result.output
    (record,) = json.loads(result.output)["results"]
    assert record["ok"] is False and record["error"].startswith("UnsafeCheckpointError: ")
    assert not marker.exists()


def test_no_state_dict(folder: Path, unchanged: Any) -> None:
    path = folder / "lightning.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 30,
            "pytorch-lightning_version": "2.5.0",
            "optimizer_states": [],
            "lr_schedulers": [],
            "callbacks": {},
            "loops": {},
        },
        path,
    )
    with unchanged():
        error = restore_raises(path, MissingStateError, r"lacks state for checkpoint\['state_dict'\]")
        assert isinstance(error, MissingStateError) and error.names == ("checkpoint['state_dict']",)
        with pytest.raises(MissingStateError, match="holds no model weights"):
            TinyNet.load_from_checkpoint(path)


def test_shape_mismatch(folder: Path, unchanged: Any) -> None:
    path = commit(folder / "wide.ckpt", patterned_model(hidden=16))
    with unchanged():
        gist = r"state_dict\['l1\.weight'\] has shape \(16, 4\) in the checkpoint but \(8, 4\) in the model"
        restore_raises(path, IncompatibleStateError, gist)
        with pytest.raises(IncompatibleStateError, match=r"size mismatch for l1\.weight"):
            TinyNet.load_from_checkpoint(path, hidden=8)


def test_no_optimizer_state(folder: Path, unchanged: Any) -> None:
    path = commit(folder / "weights.ckpt")
    model = TinyNet()
    before = state(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with unchanged(), pytest.raises(MissingStateError, match="optimizer_states") as info:
        fresh(model, optimizers=optimizer).restore(path)
    assert info.value.names == ("checkpoint['optimizer_states']",)
    assert same_state(model, before)  # nothing restored, the model included


def _png() -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not a checkpoint")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "gist"),
    [
        pytest.param("image.ckpt", _png(), "not a readable checkpoint", id="foreign_png"),
        pytest.param("archive.ckpt", _zip(), "not a readable checkpoint .*not in a subdirectory", id="foreign_zip"),
        pytest.param("config.ckpt", b'{"state_dict": {}}', "not a readable checkpoint", id="foreign_json"),
    ],
)
def test_foreign_file(folder: Path, unchanged: Any, name: str, content: bytes, gist: str) -> None:
    path = folder / name
    path.write_bytes(content)
    with unchanged():
        error = restore_raises(path, CorruptCheckpointError, gist)
        assert "of another file type" in str(error)
        assert not isinstance(error, UnsafeCheckpointError)


def test_folder_not_writable(folder: Path, unchanged: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """We run as root (permissions are not enforced), so the refusal is simulated."""
    existing = commit(folder / "a.ckpt")
    real_open = builtins.open

    def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        writes = isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")
        if writes and Path(os.fspath(file)).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, mode, *args, **kwargs)

    def guarded_open_direct(path: str, *args: Any) -> Any:  # the O_DIRECT open is refused alike
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open_direct(path, *args)

    real_open_direct = durable.open_direct
    checkpointer = fresh(patterned_model())
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(durable, "open_direct", guarded_open_direct)
    with unchanged(), pytest.raises(StorageError, match="Check that the folder is writable") as info:
        checkpointer.save_checkpoint(folder / "b.ckpt")
    monkeypatch.undo()
    assert info.value.errno == errno.EACCES
    assert str(folder / "b.ckpt") in str(info.value)
    verify_checkpoint(str(existing))


def test_filename_escapes_folder(folder: Path, tmp_path: Path, unchanged: Any) -> None:
    with unchanged():
        for filename in ("../escape-{epoch}", "sub/../../escape", str(tmp_path / "abs-{epoch}")):
            with pytest.raises(ConfigurationError, match="outside dirpath"):
                ModelCheckpoint(dirpath=folder, filename=filename)

        class EscapingLast(ModelCheckpoint):
            CHECKPOINT_NAME_LAST = "../last"

        policy = EscapingLast(dirpath=folder, save_top_k=0, save_last=True)
        checkpointer = Checkpointer(folder, callbacks=[policy], save_rng_state=False).track(model=TinyNet())
        with pytest.raises(ConfigurationError, match=r"'\.\./last' would put checkpoints outside dirpath"):
            checkpointer.fit(lambda epoch: list(checkpointer.batches(range(1))), max_epochs=1)  # a step: a save
    # a subfolder inside dirpath stays allowed
    inside = ModelCheckpoint(dirpath=folder, filename="sub/{epoch}")
    runner = Checkpointer(folder, callbacks=[inside], save_rng_state=False).track(model=TinyNet())
    runner.fit(lambda epoch: list(runner.batches(range(1))), max_epochs=1)
    assert (folder / "sub" / "epoch=0.ckpt").is_file()


def test_manifest_names_other_file(
    folder: Path, tmp_path: Path, unchanged: Any, caplog: pytest.LogCaptureFixture
) -> None:
    other = commit(tmp_path / "other.ckpt")  # a committed checkpoint outside the folder
    path = folder / "x.ckpt"
    torch.save({"epoch": 1, "global_step": 5, "state_dict": TinyNet().state_dict()}, path)
    forge_manifest(path, file="../other.ckpt")
    with unchanged():
        with pytest.raises(CheckpointNotFoundError, match="is not a committed checkpoint"):
            verify_checkpoint(str(path))
        assert "it names '../other.ckpt'" in caplog.text
        checkpointer = Checkpointer(folder, enable_checkpointing=False, save_rng_state=False).track(model=TinyNet())
        assert checkpointer.committed_checkpoints() == []
        with pytest.raises(CheckpointNotFoundError, match='ckpt_path="last": no committed checkpoint'):
            checkpointer.restore("last", must_exist=True)
        result = CliRunner().invoke(main, ["verify", str(folder)])
        assert result.exit_code == 1 and "no committed checkpoint" in result.output
    verify_checkpoint(str(other))  # never touched


class _FromTheFuture(Callback):
    """Stamps the checkpoint as written in the next format version."""

    def on_save_checkpoint(self, checkpointer: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["ckpthooks"]["format_version"] = FORMAT_VERSION + 1


def test_newer_checkpoint_format(folder: Path, unchanged: Any) -> None:
    path = folder / "future.ckpt"
    writer = Checkpointer(folder, callbacks=[_FromTheFuture()], enable_checkpointing=False, save_rng_state=False)
    writer.track(model=patterned_model()).save_checkpoint(path)  # committed: verification passes
    gist = f"written by a newer ckpthooks: its checkpoint format is {FORMAT_VERSION + 1}.*Upgrade ckpthooks"
    with unchanged():
        restore_raises(path, IncompatibleFormatError, gist)
        with pytest.raises(IncompatibleFormatError, match=gist):
            TinyNet.load_from_checkpoint(path)
        model = TinyNet()
        before = state(model)
        with pytest.raises(IncompatibleFormatError, match="Upgrade ckpthooks"):
            fresh(model).restore_from_dict(torch.load(path, weights_only=True))
        assert same_state(model, before)


def test_newer_manifest_version(folder: Path, unchanged: Any) -> None:
    path = commit(folder / "a.ckpt")
    target = Path(manifest_path(str(path)))
    data = json.loads(target.read_text())
    data["manifest_version"] = MANIFEST_VERSION + 1
    target.write_text(json.dumps(data))
    gist = f"manifest version is {MANIFEST_VERSION + 1}.*Upgrade ckpthooks"
    with unchanged():
        error = restore_raises(path, IncompatibleFormatError, gist)
        assert str(target) in str(error)
        checkpointer = Checkpointer(folder, enable_checkpointing=False, save_rng_state=False).track(model=TinyNet())
        with pytest.raises(IncompatibleFormatError, match=gist):
            checkpointer.restore("last")  # no silent fall back to an older checkpoint
