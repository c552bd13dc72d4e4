"""One process, one XLA device (real torch_xla, ``PJRT_DEVICE=CPU``): save, verify and resume.

Skipped where torch_xla is not installed; ``make xla-test`` runs it in ``.venv-xla``.
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

pytest.importorskip("torch_xla", reason="torch_xla is not installed here; the XLA lane runs this (make xla-test)")

import torch
import torch_xla
import torch_xla.core.xla_model as xm
from ckpthooks import Checkpointer, TorchCheckpointIO
from ckpthooks.plugin import PluginHost, read_manifest

from ckpthooks_xla import XLACheckpointIO, XLAContext, move_to_cpu, xla_in_use

REPO = Path(__file__).resolve().parents[3]
MAIN_VENV_PYTHON = REPO / ".venv" / "bin" / "python"


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch_xla.device()


def _train(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, steps: int, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)  # data made on the CPU: no device RNG involved
    for _ in range(steps):
        x = torch.randn(8, 4, generator=generator).to(device)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch_xla.sync()


def _setup(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, optimizer


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def _device_types(optimizer: torch.optim.Optimizer) -> list[tuple[str, str]]:
    """(state name, device type) of every optimizer state tensor (AdamW keeps ``step`` on the CPU)."""
    return [
        (name, value.device.type)
        for state in optimizer.state.values()
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
    ]


def _load_elsewhere(path: Path, python: str | Path, block_torch_xla: bool) -> dict[str, Any]:
    """Load ``path`` with torch.load(weights_only=True) in a new process; tensor devices and torch version."""
    code = textwrap.dedent(
        f"""
        import json, sys
        if {block_torch_xla!r}:
            sys.modules["torch_xla"] = None  # this process cannot import torch_xla
        import torch
        data = torch.load({str(path)!r}, weights_only=True)
        devices = set()
        def walk(obj):
            if isinstance(obj, torch.Tensor):
                devices.add(obj.device.type)
            elif isinstance(obj, dict):
                for value in obj.values():
                    walk(value)
            elif isinstance(obj, (list, tuple)):
                for value in obj:
                    walk(value)
        walk(data)
        print(json.dumps({{"devices": sorted(devices), "torch": torch.__version__,
                          "torch_xla": "torch_xla" in sys.modules and sys.modules["torch_xla"] is not None}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    result = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


# --------------------------------------------------------------------------- ranks


def test_one_ordinal_is_the_master_and_needs_no_context(xla_host: PluginHost, device: torch.device) -> None:
    assert xla_in_use()
    context = XLAContext()
    assert (context.rank(), context.world_size()) == (0, 1)
    assert xm.is_master_ordinal(local=False)
    assert xla_host.distributed_context() is None  # one ordinal: RANK & co. decide, as without the plugin
    ckpt = Checkpointer(plugin_host=xla_host, enable_checkpointing=False)
    assert (ckpt.global_rank, ckpt.world_size, ckpt.is_global_zero) == (0, 1, True)


def test_the_xla_backend_is_chosen_while_a_device_is_in_use(xla_host: PluginHost, device: torch.device) -> None:
    assert type(xla_host.checkpoint_io_for("/tmp/a.ckpt")) is XLACheckpointIO


# --------------------------------------------------------------------------- save and resume


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, device: torch.device) -> dict[str, Any]:
    """Two epochs of training on the XLA device with the default policy, resumable from "last"."""
    import ckpthooks_xla.plugin

    host = PluginHost(load_entry_points=False)
    host.register(ckpthooks_xla.plugin, name="xla")
    root = tmp_path_factory.mktemp("xla-run")
    model, optimizer = _setup(device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    ckpt = Checkpointer(root, plugin_host=host).track(model=model, optimizers=optimizer, lr_schedulers=scheduler)
    for epoch in range(2):
        ckpt.epoch_start(epoch)
        for step in range(3):
            _train(model, optimizer, device, steps=1, seed=100 * epoch + step)
            ckpt.step_end()
        scheduler.step()
        ckpt.epoch_end()
    path = ckpt.find_checkpoint("last")
    assert path is not None
    return {
        "root": root,
        "path": Path(path),
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "host": host,
    }


def test_the_live_state_stays_on_the_device_after_a_save(trained_run: dict[str, Any]) -> None:
    assert all(p.device.type == "xla" for p in trained_run["model"].parameters())
    devices = _device_types(trained_run["optimizer"])
    assert ("exp_avg", "xla") in devices and ("exp_avg_sq", "xla") in devices
    assert {device for name, device in devices if name != "step"} == {"xla"}


def test_resume_restores_model_and_optimizer_onto_the_xla_device(
    trained_run: dict[str, Any], device: torch.device
) -> None:
    model, optimizer = _setup(device)
    _train(model, optimizer, device, steps=1, seed=7)  # different state, to be overwritten
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    ckpt = Checkpointer(trained_run["root"], plugin_host=trained_run["host"]).track(
        model=model, optimizers=optimizer, lr_schedulers=scheduler
    )
    report = ckpt.restore("last", must_exist=True)
    assert report is not None
    assert {"model", "optimizers", "lr_schedulers"} <= set(report.restored)
    assert (report.epoch, report.global_step) == (1, 6)
    assert all(p.device.type == "xla" for p in model.parameters())
    assert _device_types(optimizer) == _device_types(trained_run["optimizer"])  # exp_avg & co. on the device
    for restored, original in zip(model.parameters(), trained_run["model"].parameters()):
        assert torch.equal(restored.cpu(), original.cpu())
    for restored, original in zip(_optimizer_tensors(optimizer), _optimizer_tensors(trained_run["optimizer"])):
        assert torch.equal(restored.cpu(), original.cpu())
    assert scheduler.state_dict() == trained_run["scheduler"].state_dict()

    # one more step on both: the resumed run continues exactly like the uninterrupted one
    _train(model, optimizer, device, steps=1, seed=999)
    _train(trained_run["model"], trained_run["optimizer"], device, steps=1, seed=999)
    for resumed, original in zip(model.parameters(), trained_run["model"].parameters()):
        assert torch.equal(resumed.cpu(), original.cpu())


def test_the_manifest_commits_the_file_and_verify_passes(trained_run: dict[str, Any]) -> None:
    path = trained_run["path"]
    manifest = read_manifest(str(path))
    assert manifest is not None
    assert manifest.size == path.stat().st_size and manifest.checksum
    assert "xla" in manifest.plugins
    cli = Path(sys.executable).with_name("ckpthooks")
    result = subprocess.run(
        [str(cli), "verify", "--deep", "--json", str(trained_run["root"])],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_file_holds_cpu_tensors_that_load_without_torch_xla(trained_run: dict[str, Any]) -> None:
    loaded = _load_elsewhere(trained_run["path"], sys.executable, block_torch_xla=True)
    assert loaded == {"devices": ["cpu"], "torch": torch.__version__, "torch_xla": False}


@pytest.mark.skipif(not MAIN_VENV_PYTHON.exists(), reason=f"no main venv at {MAIN_VENV_PYTHON} (make venv)")
def test_the_file_loads_in_the_main_venv_with_its_newer_torch(trained_run: dict[str, Any]) -> None:
    loaded = _load_elsewhere(trained_run["path"], MAIN_VENV_PYTHON, block_torch_xla=False)
    assert "error" not in loaded, loaded
    assert loaded["devices"] == ["cpu"] and loaded["torch_xla"] is False
    assert loaded["torch"] != torch.__version__  # really another torch (2.13 in the main venv)


# --------------------------------------------------------------------------- which layer converts


def _save_one(root: Path, host: PluginHost, device: torch.device, checkpoint_io: Any) -> Path:
    model, optimizer = _setup(device)
    _train(model, optimizer, device, steps=1, seed=1)
    ckpt = Checkpointer(root, plugin_host=host, checkpoint_io=checkpoint_io, enable_checkpointing=False)
    ckpt.track(model=model, optimizers=optimizer).save_checkpoint(root / "a.ckpt")
    return root / "a.ckpt"


def test_with_the_plugin_any_backend_receives_cpu_tensors(
    tmp_path: Path, xla_host: PluginHost, device: torch.device
) -> None:
    path = _save_one(tmp_path, xla_host, device, TorchCheckpointIO())  # the plain torch backend, chosen by hand
    assert _load_elsewhere(path, sys.executable, block_torch_xla=True)["devices"] == ["cpu"]


def test_the_xla_backend_alone_converts_without_the_plugin(tmp_path: Path, device: torch.device) -> None:
    path = _save_one(tmp_path, PluginHost(load_entry_points=False), device, XLACheckpointIO())
    assert _load_elsewhere(path, sys.executable, block_torch_xla=True)["devices"] == ["cpu"]


def test_without_either_the_file_would_need_torch_xla(tmp_path: Path, device: torch.device) -> None:
    # why the plugin exists: torch.save keeps XLA tensors on the XLA device
    path = _save_one(tmp_path, PluginHost(load_entry_points=False), device, TorchCheckpointIO())
    loaded = _load_elsewhere(path, sys.executable, block_torch_xla=True)
    assert "error" in loaded or loaded["devices"] != ["cpu"], loaded


def test_move_to_cpu_copies_xla_tensors_once_and_keeps_the_input(device: torch.device) -> None:
    shared = torch.arange(4.0, device=device) * 2  # a pending computation
    data = {"a": {"w": shared, "cpu": torch.ones(1)}, "b": [shared, 3], "name": "x"}
    out = move_to_cpu(data)
    assert out["a"]["w"].device.type == "cpu" and torch.equal(out["a"]["w"], torch.arange(4.0) * 2)
    assert out["b"][0] is out["a"]["w"]
    assert out["a"]["cpu"] is data["a"]["cpu"] and out["name"] == "x"
    assert data["a"]["w"].device.type == "xla"  # the input is not changed
    assert move_to_cpu(data, convert=False) is data  # the ordinals that do not write only sync
