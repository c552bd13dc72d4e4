"""Multi-ordinal XLA runs on the CPU, started by ``test_xla_multi.py``.

``python _xla_worker.py spawn WORKDIR``
    ``xmp.spawn`` with ``CPU_NUM_DEVICES=2``: torch_xla runs one process with one thread per
    device, ordinals 0 and 1; ``torch.distributed`` is not initialized, so ranks come from the XLA
    plugin's ``distributed_context``. Scenarios, in order: fit, resume, fail, mismatch, timeout.
``python -m torch.distributed.run --nproc_per_node 2 _xla_worker.py gloo WORKDIR``
    Two processes, each an XLA world of one ordinal (``PJRT_DEVICE=CPU``), with a gloo process
    group initialized alongside: ranks come from torch.distributed.

Every rank writes ``WORKDIR/<scenario>/result-<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch_xla
import torch_xla.runtime as xr
from ckpthooks import Checkpointer, ModelCheckpoint, hookimpl
from ckpthooks.plugin import PluginHost, get_plugin_host

import ckpthooks_xla.plugin

_setup_lock = threading.Lock()
_recorder: WriteRecorder | None = None


class WriteRecorder:
    """Counts the writes each rank makes (the storage hooks run on the writer rank only)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.writes: dict[int, int] = {}
        self.fail_next = False

    @hookimpl
    def save_checkpoint(self, path: str) -> None:
        rank = _rank()
        with self.lock:
            self.writes[rank] = self.writes.get(rank, 0) + 1
            fail, self.fail_next = self.fail_next, False
        if fail:
            raise OSError(28, "No space left on device (injected)")
        return None


def _rank() -> int:
    import torch.distributed as dist

    return int(dist.get_rank()) if dist.is_initialized() else int(xr.global_ordinal())


def _host() -> tuple[PluginHost, WriteRecorder]:
    """The shared host (entry points included), with the XLA plugin and the recorder, set up once."""
    global _recorder
    with _setup_lock:
        host = get_plugin_host()
        if _recorder is None:
            if "xla" not in {info.name for info in host.plugins() if info.active}:
                host.register(ckpthooks_xla.plugin, name="xla")  # not pip-installed: register by hand
            _recorder = WriteRecorder()
            host.register(_recorder, name="write-recorder")
        return host, _recorder


def _model(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)  # every rank starts from the same weights
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, seed: int) -> float:
    # the same data on every rank and no collective in the graph: XLA's collectives between CPU
    # device threads are not reliable (see the README); each rank trains an identical replica
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=generator).to(device)
    loss = model(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    torch_xla.sync()
    return float(loss.detach().cpu())


def _record(workdir: Path, scenario: str, rank: int, result: dict[str, Any]) -> None:
    folder = workdir / scenario
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"result-{rank}.json").write_text(json.dumps(result))


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


def scenario_fit(workdir: Path, host: PluginHost, recorder: WriteRecorder) -> dict[str, Any]:
    """Three epochs with top-2 on a metric the ranks disagree about: rank 0's values decide."""
    device = torch_xla.device()
    rank = _rank()
    model, optimizer = _model(device)
    policy = ModelCheckpoint(
        dirpath=str(workdir / "fit" / "ckpts"),
        monitor="loss",
        save_top_k=2,
        save_last=True,
        filename="{epoch}-{loss:.4f}",
    )
    ckpt = Checkpointer(workdir / "fit", callbacks=[policy], plugin_host=host).track(model=model, optimizers=optimizer)
    before = recorder.writes.get(rank, 0)
    losses = []
    for epoch in range(3):
        ckpt.epoch_start(epoch)
        for step in range(2):
            losses.append(_step(model, optimizer, device, seed=10 * epoch + step))
            ckpt.step_end()
        ckpt.log("loss", losses[-1] + 100 * rank)  # ranks disagree; rank 0's value names and ranks files
        ckpt.epoch_end()
    return {
        "rank": rank,
        "world_size": ckpt.world_size,
        "is_global_zero": ckpt.is_global_zero,
        "context": type(host.distributed_context()).__name__,
        "writes": recorder.writes.get(rank, 0) - before,
        "best_model_path": policy.best_model_path,
        "last_model_path": policy.last_model_path,
        "kept": sorted(policy.best_k_models),
        "backend": type(host.checkpoint_io_for(str(workdir))).__name__,
        "params": [p.detach().cpu().tolist() for p in model.parameters()],
    }


def scenario_resume(workdir: Path, host: PluginHost, recorder: WriteRecorder) -> dict[str, Any]:
    """Every rank resumes "last" (rank 0 decides which file) onto its own device."""
    device = torch_xla.device()
    model, optimizer = _model(device)
    ckpt = Checkpointer(workdir / "fit", plugin_host=host, callbacks=[
        ModelCheckpoint(dirpath=str(workdir / "fit" / "ckpts"), monitor="loss", save_top_k=2, save_last=True,
                        filename="{epoch}-{loss:.4f}")
    ]).track(model=model, optimizers=optimizer)  # fmt: skip
    report = ckpt.restore("last", must_exist=True)
    assert report is not None
    momentum = [s["momentum_buffer"].device.type for s in optimizer.state.values()]
    return {
        "path": report.path,
        "epoch": report.epoch,
        "global_step": report.global_step,
        "restored": sorted(report.restored),
        "param_devices": sorted({p.device.type for p in model.parameters()}),
        "momentum_devices": sorted(set(momentum)),
        "params": [p.detach().cpu().tolist() for p in model.parameters()],
    }


def scenario_fail(workdir: Path, host: PluginHost, recorder: WriteRecorder) -> dict[str, Any]:
    """The writer's write fails: every rank raises, none hangs."""
    device = torch_xla.device()
    model, _ = _model(device)
    ckpt = Checkpointer(workdir / "fail", plugin_host=host, enable_checkpointing=False).track(model=model)
    if ckpt.is_global_zero:
        recorder.fail_next = True
    started = time.monotonic()
    try:
        ckpt.save_checkpoint(workdir / "fail" / "a.ckpt")
    except Exception as exc:
        return {"error": _error(exc), "seconds": time.monotonic() - started}
    return {"error": None, "seconds": time.monotonic() - started}


def scenario_mismatch(workdir: Path, host: PluginHost, recorder: WriteRecorder) -> dict[str, Any]:
    """The ranks save different paths: both raise instead of pairing unrelated collectives."""
    device = torch_xla.device()
    model, _ = _model(device)
    rank = _rank()
    ckpt = Checkpointer(workdir / "mismatch", plugin_host=host, enable_checkpointing=False).track(model=model)
    try:
        ckpt.save_checkpoint(workdir / "mismatch" / f"rank{rank}.ckpt")
    except Exception as exc:
        return {"error": _error(exc)}
    return {"error": None}


def scenario_timeout(workdir: Path, host: PluginHost, recorder: WriteRecorder) -> dict[str, Any]:
    """Rank 1 never saves: rank 0 gives up after CKPTHOOKS_XLA_TIMEOUT seconds (run last: the
    ranks are out of step afterwards)."""
    device = torch_xla.device()
    model, _ = _model(device)
    rank = _rank()
    ckpt = Checkpointer(workdir / "timeout", plugin_host=host, enable_checkpointing=False).track(model=model)
    if rank != 0:
        return {"error": None, "seconds": 0.0}
    started = time.monotonic()
    try:
        ckpt.save_checkpoint(workdir / "timeout" / "a.ckpt")
    except Exception as exc:
        return {"error": _error(exc), "seconds": time.monotonic() - started}
    return {"error": None, "seconds": time.monotonic() - started}


SPAWN_SCENARIOS = {
    "fit": scenario_fit,
    "resume": scenario_resume,
    "fail": scenario_fail,
    "mismatch": scenario_mismatch,
    "timeout": scenario_timeout,
}
GLOO_SCENARIOS = {"fit": scenario_fit, "resume": scenario_resume, "fail": scenario_fail}


def _run(scenarios: dict[str, Any], workdir: Path) -> None:
    host, recorder = _host()
    rank = _rank()
    for name, scenario in scenarios.items():
        try:
            result = scenario(workdir, host, recorder)
        except BaseException as exc:
            result = {"crashed": _error(exc), "traceback": traceback.format_exc()}
        result.setdefault("ordinal", int(xr.global_ordinal()))
        _record(workdir, name, rank, result)


def _spawned(index: int, workdir: str) -> None:
    _run(SPAWN_SCENARIOS, Path(workdir))


def main() -> None:
    mode, workdir = sys.argv[1], sys.argv[2]
    if mode == "spawn":
        import torch_xla.distributed.xla_multiprocessing as xmp

        xmp.spawn(_spawned, args=(workdir,))
    elif mode == "gloo":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        try:
            _run(GLOO_SCENARIOS, Path(workdir))
        finally:
            dist.destroy_process_group()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    os._exit(0)  # skip torch_xla's runtime teardown at exit


if __name__ == "__main__":
    main()
