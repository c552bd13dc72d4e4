"""``ckpthooks convert``: to and from safetensors weights, and Lightning / torch files into committed checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer
from ckpthooks._catalog import read_manifest, verify_checkpoint
from tests.cli_helpers import run_cli, run_json, train
from tests.helpers import TinyNet

safetensors_torch = pytest.importorskip("safetensors.torch")


def lightning_file(path: Path, **extra: object) -> dict[str, object]:
    """A checkpoint laid out like Lightning 2.x writes it (what Trainer.save_checkpoint produces)."""
    model = TinyNet()
    checkpoint = {
        "epoch": 4,
        "global_step": 200,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": model.state_dict(),
        "loops": {},
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
            "'train_time_interval': None}": {"monitor": "val_loss", "current_score": torch.tensor(0.125)},
        },
        "optimizer_states": [torch.optim.SGD(model.parameters(), lr=0.1).state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": dict(model.hparams),
        **extra,
    }
    torch.save(checkpoint, path)
    return checkpoint


def test_a_checkpoint_to_safetensors_holds_its_model_weights(tmp_path: Path) -> None:
    ckpt = train(tmp_path, [0.5, 0.25])
    source = tmp_path / "checkpoints" / "last.ckpt"
    result = run_cli("convert", str(source), str(tmp_path / "model.safetensors"))
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "safetensors" in result.stdout
    weights = safetensors_torch.load_file(str(tmp_path / "model.safetensors"))
    expected = ckpt.model.state_dict()
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt" and metadata["global_step"] == "4" and metadata["epoch"] == "1"
    assert read_manifest(str(tmp_path / "model.safetensors")) is None  # weights for others, not a checkpoint


def test_tied_weights_are_stored_as_separate_tensors(tmp_path: Path) -> None:
    weight = torch.randn(3, 3)
    state = {"encoder.weight": weight, "decoder.weight": weight, "t": weight.t()}
    torch.save({"state_dict": state}, tmp_path / "a.ckpt")
    assert run_cli("convert", str(tmp_path / "a.ckpt"), str(tmp_path / "a.safetensors")).exit_code == 0
    weights = safetensors_torch.load_file(str(tmp_path / "a.safetensors"))
    assert torch.equal(weights["encoder.weight"], weight) and torch.equal(weights["decoder.weight"], weight)
    assert torch.equal(weights["t"], weight.t())


def test_safetensors_to_a_committed_checkpoint_that_restores(tmp_path: Path) -> None:
    source = TinyNet()
    safetensors_torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    report = run_json("convert", str(tmp_path / "w.safetensors"), str(tmp_path / "w.ckpt"))
    assert report["committed"] is True and report["tensors"] == 4
    assert report["src"] == str(tmp_path / "w.safetensors")  # it printed null
    manifest = verify_checkpoint(str(tmp_path / "w.ckpt"))
    assert manifest.weights_only is True and manifest.writer is None
    target = TinyNet()
    report_restore = Checkpointer(tmp_path, enable_checkpointing=False).track(model=target).restore(
        tmp_path / "w.ckpt", strict=False
    )
    assert report_restore is not None and "model" in report_restore.restored
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor)
    checkpoint = torch.load(tmp_path / "w.ckpt", weights_only=True)
    assert checkpoint["pytorch-lightning_version"] and checkpoint["ckpthooks"]["weights_only"] is True


def test_round_trip_keeps_epoch_and_step(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.25, 0.1])
    run_cli("convert", str(tmp_path / "checkpoints" / "last.ckpt"), str(tmp_path / "w.safetensors"))
    report = run_json("convert", str(tmp_path / "w.safetensors"), str(tmp_path / "back.ckpt"))
    assert (report["epoch"], report["global_step"]) == (2, 6)
    assert report["src"] == str(tmp_path / "w.safetensors")


def test_a_lightning_file_is_committed_byte_for_byte(tmp_path: Path) -> None:
    lightning_file(tmp_path / "lightning.ckpt")
    report = run_json("convert", str(tmp_path / "lightning.ckpt"), str(tmp_path / "run" / "imported.ckpt"))
    assert (report["epoch"], report["global_step"]) == (4, 200)
    assert report["metrics"] == {"val_loss": 0.125}
    assert (tmp_path / "run" / "imported.ckpt").read_bytes() == (tmp_path / "lightning.ckpt").read_bytes()
    manifest = verify_checkpoint(str(tmp_path / "run" / "imported.ckpt"))
    assert manifest.weights_only is False and manifest.metrics == {"val_loss": 0.125}
    assert manifest.global_step == 200 and manifest.checksum
    ckpt = Checkpointer(tmp_path / "run", enable_checkpointing=False).track(model=TinyNet())
    assert ckpt.find_checkpoint("last") == str(tmp_path / "run" / "imported.ckpt")


def test_a_lightning_file_can_be_committed_in_place(tmp_path: Path) -> None:
    lightning_file(tmp_path / "l.ckpt")
    assert run_cli("convert", str(tmp_path / "l.ckpt"), str(tmp_path / "l.ckpt")).exit_code == 0
    assert verify_checkpoint(str(tmp_path / "l.ckpt")).global_step == 200
    again = run_cli("convert", str(tmp_path / "l.ckpt"), str(tmp_path / "l.ckpt"))
    assert again.exit_code == 1 and "--overwrite" in again.stderr


class Unsafe:
    pass


def test_a_file_that_needs_unpickling_code_is_refused(tmp_path: Path) -> None:
    lightning_file(tmp_path / "l.ckpt", extra_object=Unsafe())
    result = run_cli("convert", str(tmp_path / "l.ckpt"), str(tmp_path / "out.ckpt"))
    assert result.exit_code == 1
    assert "UnsafeCheckpointError" in result.stderr and not (tmp_path / "out.ckpt").exists()


def test_a_bare_state_dict_is_wrapped_as_state_dict(tmp_path: Path) -> None:
    torch.save(TinyNet().state_dict(), tmp_path / "sd.pt")
    report = run_json("convert", str(tmp_path / "sd.pt"), str(tmp_path / "sd.ckpt"))
    assert report["committed"] is True
    assert set(torch.load(tmp_path / "sd.ckpt", weights_only=True)["state_dict"]) == set(TinyNet().state_dict())


def test_key_names_where_the_weights_are(tmp_path: Path) -> None:
    torch.save({"model": TinyNet().state_dict(), "step": 3}, tmp_path / "custom.pt")
    result = run_cli("convert", str(tmp_path / "custom.pt"), str(tmp_path / "c.safetensors"))
    assert result.exit_code == 1 and "--key" in result.stderr
    keyed = run_cli("convert", str(tmp_path / "custom.pt"), str(tmp_path / "c.safetensors"), "--key", "model")
    assert keyed.exit_code == 0
    assert set(safetensors_torch.load_file(str(tmp_path / "c.safetensors"))) == set(TinyNet().state_dict())


def test_an_existing_destination_needs_overwrite(tmp_path: Path) -> None:
    torch.save(TinyNet().state_dict(), tmp_path / "sd.pt")
    (tmp_path / "out.safetensors").write_bytes(b"old")
    result = run_cli("convert", str(tmp_path / "sd.pt"), str(tmp_path / "out.safetensors"))
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert (tmp_path / "out.safetensors").read_bytes() == b"old"
    assert run_cli("convert", str(tmp_path / "sd.pt"), str(tmp_path / "out.safetensors"), "--overwrite").exit_code == 0


def test_without_the_safetensors_package_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.save(TinyNet().state_dict(), tmp_path / "sd.pt")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    result = run_cli("convert", str(tmp_path / "sd.pt"), str(tmp_path / "w.safetensors"))
    assert result.exit_code == 1
    assert "pip install safetensors" in result.stderr


def test_converting_a_non_checkpoint_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"hello world, not a checkpoint")
    result = run_cli("convert", str(tmp_path / "x.bin"), str(tmp_path / "x.safetensors"))
    assert result.exit_code == 1 and "neither" in result.stderr
    missing = run_cli("convert", str(tmp_path / "none.ckpt"), str(tmp_path / "x.safetensors"))
    assert missing.exit_code == 1 and "no file" in missing.stderr


def test_convert_help_documents_every_direction() -> None:
    result = run_cli("convert", "--help")
    assert result.exit_code == 0
    for text in ("safetensors", "Lightning", "--to", "--key", "--overwrite", "--json", "Exit code"):
        assert text in result.output


def test_an_existing_destination_fails_before_torch_is_imported(tmp_path: Path) -> None:
    """It failed only after the source was read (torch imported), and not as a FileExistsError."""
    import subprocess
    import sys

    (tmp_path / "w.safetensors").write_bytes(b"not even read")
    (tmp_path / "w.ckpt").write_bytes(b"already here")
    code = f"""
import sys
from ckpthooks.cli import main
try:
    main(["convert", {str(tmp_path / "w.safetensors")!r}, {str(tmp_path / "w.ckpt")!r}])
except SystemExit as exc:
    print("exit", exc.code, "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "exit 1 False", done.stdout + done.stderr
    assert "exists already; pass --overwrite" in done.stderr
    assert (tmp_path / "w.ckpt").read_bytes() == b"already here"


def test_the_existing_destination_error_is_a_file_exists_error(tmp_path: Path) -> None:
    from ckpthooks import ConfigurationError, DestinationExistsError
    from ckpthooks._cli.copying import destination_free

    (tmp_path / "taken.ckpt").write_bytes(b"x")
    with pytest.raises(FileExistsError) as info:
        destination_free(str(tmp_path / "taken.ckpt"), None, False)
    assert isinstance(info.value, DestinationExistsError) and isinstance(info.value, ConfigurationError)


def test_hyperparameters_survive_a_round_trip_through_safetensors(tmp_path: Path) -> None:
    """A .ckpt -> .safetensors -> .ckpt round trip silently dropped the model's and the datamodule's
    hyperparameters; they travel in the safetensors metadata now."""
    from ckpthooks import HyperparametersMixin

    class Data(HyperparametersMixin):
        def __init__(self, batch_size: int = 8, root: str = "data") -> None:
            self.save_hyperparameters()

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    ckpt = Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet(hidden=5), datamodule=Data(16))
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    original = torch.load(tmp_path / "a.ckpt", weights_only=True)
    report = run_json("convert", str(tmp_path / "a.ckpt"), str(tmp_path / "w.safetensors"))
    assert report["dropped"] == []
    run_json("convert", str(tmp_path / "w.safetensors"), str(tmp_path / "back.ckpt"))
    back = torch.load(tmp_path / "back.ckpt", weights_only=True)
    assert back["hyper_parameters"] == dict(original["hyper_parameters"]) == {
        "in_dim": 4, "hidden": 5, "out_dim": 1, "dropout": 0.0,
    }  # fmt: skip
    assert back["datamodule_hyper_parameters"] == {"batch_size": 16, "root": "data"}
    assert back["hparams_name"] == original["hparams_name"]
    restored = TinyNet.load_from_checkpoint(str(tmp_path / "back.ckpt"))
    assert restored.hparams["hidden"] == 5
