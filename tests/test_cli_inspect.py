"""``ckpthooks inspect``: what a file holds, read without running any code the file names."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer
from ckpthooks.testing.storage_contract import fresh_memory_url
from tests.cli_helpers import run_cli, run_json, train
from tests.helpers import TinyNet

REPO = Path(__file__).resolve().parents[1]


def storages_bytes(value: Any) -> tuple[int, int]:
    """(distinct tensors, bytes of distinct storages) of a loaded checkpoint, the reference."""
    storages: dict[int, int] = {}
    tensors: set[tuple[int, tuple[int, ...], str]] = set()

    def walk(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            tensors.add((storage.data_ptr(), tuple(item.shape), str(item.dtype)))
        elif isinstance(item, dict):
            for child in item.values():
                walk(child)
        elif isinstance(item, (list, tuple)):
            for child in item:
                walk(child)

    walk(value)
    return len(tensors), sum(storages.values())


def test_inspect_a_ckpthooks_checkpoint(tmp_path: Path) -> None:
    model = TinyNet(in_dim=4, hidden=8)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False).track(model=model, optimizers=optimizer)
    ckpt.log("val_loss", 0.25)
    path = tmp_path / "a.ckpt"
    ckpt.save_checkpoint(path)
    report = run_json("inspect", str(path))
    assert report["format"] == "ckpthooks" and report["container"] == "torch-zip"
    assert report["committed"] is True and report["size"] == path.stat().st_size
    assert (report["epoch"], report["global_step"]) == (0, 0)
    assert report["metrics"] == {"val_loss": 0.25}
    assert report["hyperparameters"] == {"in_dim": 4, "hidden": 8, "out_dim": 1, "dropout": 0.0}
    assert report["weights_only"] is False and report["loads_with_weights_only"] is True
    assert report["written_by"]["plugins"]["builtin-state"] == report["written_by"]["ckpthooks"]
    components = {c["name"]: c for c in report["components"]}
    assert components["state_dict"]["tensors"] == 4
    assert components["state_dict"]["bytes"] == sum(t.nbytes for t in model.state_dict().values())
    assert components["optimizer_states"]["tensors"] == 12  # step, exp_avg, exp_avg_sq per parameter
    assert "ckpthooks.components.rng" in components
    loaded = torch.load(path, weights_only=True)
    assert (report["tensors"]["count"], report["tensors"]["bytes"]) == storages_bytes(loaded)


def test_inspect_text_shows_the_summary(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.25])
    result = run_cli("inspect", str(tmp_path / "checkpoints" / "last.ckpt"))
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("format:        ckpthooks", "global step:   4", "metrics:       val_loss=0.25", "components:",
                     "state_dict", "optimizer_states", "plugins:       builtin-state", "#last"):  # fmt: skip
        assert expected in text, expected


class Sneaky:
    """Unpickling this would run code: inspect must never do it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def test_inspect_never_runs_code_named_in_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {"layer.weight": torch.ones(2, 3)},
            "hyper_parameters": {"lr": 0.1, "hook": Sneaky(str(marker))},
            "optimizer_states": [],
        },
        path,
    )
    report = run_json("inspect", str(path))
    assert not marker.exists()
    assert report["format"] == "lightning" and report["committed"] is False
    assert (report["epoch"], report["global_step"]) == (3, 120)
    assert report["loads_with_weights_only"] is False
    assert "__builtin__.getattr" in report["unsafe_globals"]  # how Path.touch is pickled
    assert report["hyperparameters"]["lr"] == 0.1
    assert report["tensors"] == {"count": 1, "bytes": 24}
    assert report["written_by"]["lightning_layout"] == "2.4.0"


def test_inspect_reports_a_class_it_does_not_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "ckh_inspect_foreign.py"
    module.write_text(
        textwrap.dedent(
            """
            import pathlib
            pathlib.Path(__file__).with_name("imported").touch()

            class Config(dict):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import ckh_inspect_foreign

    torch.save({"hyper_parameters": ckh_inspect_foreign.Config(lr=0.5, layers=[1, 2])}, tmp_path / "x.ckpt")
    (tmp_path / "imported").unlink()
    del sys.modules["ckh_inspect_foreign"]
    report = run_json("inspect", str(tmp_path / "x.ckpt"))
    assert report["unsafe_globals"] == ["ckh_inspect_foreign.Config"]
    assert report["hyperparameters"] == {"lr": 0.5, "layers": [1, 2]}
    assert "ckh_inspect_foreign" not in sys.modules and not (tmp_path / "imported").exists()


def test_inspect_a_plain_state_dict_and_tied_weights(tmp_path: Path) -> None:
    linear = torch.nn.Linear(3, 3)
    state = {"a.weight": linear.weight.data, "b.weight": linear.weight.data, "bias": linear.bias.data[:2]}
    torch.save(state, tmp_path / "sd.pt")
    report = run_json("inspect", str(tmp_path / "sd.pt"), "--tensors")
    assert report["format"] == "torch"
    assert report["tensors"] == {"count": 2, "bytes": 9 * 4 + 3 * 4}  # shared and sliced storages once
    assert {t["key"] for t in report["tensor_list"]} == {"a.weight", "b.weight", "bias"}
    assert report["hyperparameters"] is None


def test_inspect_a_legacy_torch_file(tmp_path: Path) -> None:
    checkpoint = {"epoch": 1, "state_dict": {"w": torch.zeros(4)}}
    torch.save(checkpoint, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    report = run_json("inspect", str(tmp_path / "old.pt"))
    assert report["container"] == "torch-legacy"
    assert report["epoch"] == 1 and report["tensors"] == {"count": 1, "bytes": 16}


def test_inspect_a_safetensors_file_reads_only_its_header(tmp_path: Path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(
        {"w": torch.zeros(2, 3), "b": torch.zeros(5, dtype=torch.bfloat16)}, str(path), metadata={"source": "test"}
    )
    report = run_json("inspect", str(path), "--tensors")
    assert report["format"] == "safetensors" and report["container"] == "safetensors"
    assert report["tensors"] == {"count": 2, "bytes": 24 + 10}
    assert {(t["key"], t["dtype"], tuple(t["shape"])) for t in report["tensor_list"]} == {
        ("w", "float32", (2, 3)),
        ("b", "bfloat16", (5,)),
    }
    assert report["written_by"]["safetensors_metadata"] == {"source": "test"}
    assert report["weights_only"] is True


def test_inspect_a_ckpthooks_safetensors_checkpoint_without_the_plugin(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    sys.path.insert(0, str(REPO / "plugins" / "ckpthooks-safetensors"))
    try:
        from ckpthooks_safetensors import SafetensorsCheckpointIO
    finally:
        sys.path.pop(0)
    model = TinyNet()
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, checkpoint_io=SafetensorsCheckpointIO())
    ckpt.track(model=model)
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    report = run_json("inspect", str(tmp_path / "a.ckpt"))
    assert report["format"] == "ckpthooks" and report["container"] == "safetensors"
    assert report["hyperparameters"]["hidden"] == 8
    components = {c["name"]: c for c in report["components"]}
    assert components["state_dict"]["tensors"] == 4


def test_inspect_a_url(tmp_path: Path) -> None:
    with fresh_memory_url() as url:
        ckpt = Checkpointer(url, enable_checkpointing=False).track(model=torch.nn.Linear(2, 2))
        ckpt.save_checkpoint(f"{url}/a.ckpt")
        report = run_json("inspect", f"{url}/a.ckpt")
        assert report["committed"] is True and report["tensors"]["count"] == 2 + 2  # weights + rng states


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\x89PNG\r\n\x1a\n" + b"0" * 20, "PNG image"), (b'{"a": 1}', "JSON"), (b"hello", "neither")],
)
def test_inspect_a_file_that_is_not_a_checkpoint_exits_1(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "f.ckpt").write_bytes(content)
    result = run_cli("inspect", str(tmp_path / "f.ckpt"))
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output


def test_inspect_a_missing_file_or_a_folder_exits_1(tmp_path: Path) -> None:
    assert "no file" in run_cli("inspect", str(tmp_path / "nope.ckpt")).stderr
    result = run_cli("inspect", str(tmp_path))
    assert result.exit_code == 1 and "folder" in result.stderr


def test_inspect_a_truncated_zip_exits_1(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(100)}, tmp_path / "t.pt")
    data = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    result = run_cli("inspect", str(tmp_path / "t.pt"))
    assert result.exit_code == 1 and "zip" in result.stderr


def test_inspect_does_not_import_torch(tmp_path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 2}, tmp_path / "a.ckpt")
    code = f"""
        import json, sys
        from ckpthooks.cli import main
        try:
            main(["inspect", {str(tmp_path / "a.ckpt")!r}, "--json"])
        except SystemExit:
            pass
        print(json.dumps({{"torch": "torch" in sys.modules}}))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *report, last = result.stdout.strip().splitlines()
    assert json.loads(last) == {"torch": False}
    assert json.loads("\n".join(report))["epoch"] == 2


def test_the_table_has_short_names_counts_each_state_once_and_shows_the_datamodule_hyperparameters(
    tmp_path: Path,
) -> None:
    """The table showed `ckpthooks.components.rng` beside a `ckpthooks` row that seemed to hold the
    RNG again, and the datamodule's hyperparameters were missing from "hyperparameters"."""
    from ckpthooks import HyperparametersMixin

    class Data(HyperparametersMixin):
        def __init__(self, batch_size: int = 8) -> None:
            self.save_hyperparameters()

        def state_dict(self) -> dict[str, Any]:
            return {}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            pass

    ckpt = Checkpointer(tmp_path, enable_checkpointing=False).track(model=TinyNet(), datamodule=Data(batch_size=16))
    for _ in ckpt.batches(range(2)):  # the loop position then holds the epoch's RNG states
        pass
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    report = run_json("inspect", str(tmp_path / "a.ckpt"))
    assert report["datamodule_hyperparameters"] == {"batch_size": 16}
    names = [c["name"] for c in report["components"]]
    assert "ckpthooks.components.rng" in names and "ckpthooks.loop" in names  # full keys in --json
    assert "ckpthooks" not in names
    # every tensor is in exactly one row
    assert sum(c["tensors"] for c in report["components"]) == report["tensors"]["count"]
    text = run_cli("inspect", str(tmp_path / "a.ckpt")).stdout
    table = text.split("components:", 1)[1]
    assert "\n  rng " in table and "ckpthooks.components" not in table
    assert "  datamodule:\n    batch_size: 16" in text.split("components:", 1)[0]
