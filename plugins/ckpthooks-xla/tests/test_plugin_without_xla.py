"""The plugin's decisions, tested everywhere: torch_xla is replaced by a stand-in where it matters.

A stand-in ``torch_xla`` module tells whether its runtime is initialized; a stand-in runtime gives
each thread its own ordinal, as ``xmp.spawn`` on the CPU does. The same scenarios run against real
torch_xla in ``test_xla_multi.py``.
"""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ckpthooks import Checkpointer, DistributedCheckpointError, TorchCheckpointIO, hookimpl
from ckpthooks.plugin import (
    DistributedContext,
    PluginHost,
    global_rank,
    is_global_zero,
    reset_collective_steps,
    world_size,
)

import ckpthooks_xla.plugin
import ckpthooks_xla.runtime
from ckpthooks_xla import XLACheckpointIO, XLAContext, xla_in_use
from ckpthooks_xla.runtime import ThreadExchange


class FakeRuntime:
    """Stands in for ``torch_xla.runtime``: ``world`` ordinals, each thread has its own."""

    def __init__(self, world: int, processes: int = 1) -> None:
        self.world = world
        self.processes = processes
        self.local = threading.local()

    def global_ordinal(self) -> int:
        return int(getattr(self.local, "ordinal", 0))

    def world_size(self) -> int:
        return self.world

    def process_count(self) -> int:
        return self.processes

    def process_index(self) -> int:
        return 0

    def is_spmd(self) -> bool:
        return False


class FakeXLA:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.initialized = True
        self.runtime = FakeRuntime(world=2)
        module = types.ModuleType("torch_xla")
        module._XLAC = types.SimpleNamespace(_xla_runtime_is_initialized=lambda: self.initialized)  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "torch_xla", module)
        monkeypatch.setattr(ckpthooks_xla.runtime, "_xr", lambda: self.runtime)


@pytest.fixture
def fake_xla(monkeypatch: pytest.MonkeyPatch) -> FakeXLA:
    """torch_xla imported with an initialized runtime of 2 ordinals (threads of this process)."""
    return FakeXLA(monkeypatch)


@pytest.fixture(autouse=True)
def _fresh_collectives(monkeypatch: pytest.MonkeyPatch) -> None:
    # every xmp.spawn starts fresh processes; tests that run ordinals as threads here start fresh too
    monkeypatch.setattr(ckpthooks_xla.runtime, "_EXCHANGE", ThreadExchange())
    reset_collective_steps()


def run_ordinals(fake: FakeXLA, target: Callable[[int], Any], timeout: float = 60.0) -> list[Any]:
    """Run ``target(ordinal)`` in one thread per ordinal; each ordinal's result or exception."""
    results: list[Any] = [None] * fake.runtime.world

    def body(ordinal: int) -> None:
        fake.runtime.local.ordinal = ordinal
        try:
            results[ordinal] = target(ordinal)
        except BaseException as exc:
            results[ordinal] = exc

    threads = [threading.Thread(target=body, args=(o,), daemon=True) for o in range(fake.runtime.world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "an ordinal is still running: a collective hangs"
    return results


class WriteRecorder:
    """Records which ordinal reached the storage hooks (the writer only should)."""

    def __init__(self, runtime: FakeRuntime, fail: bool = False) -> None:
        self.runtime = runtime
        self.fail = fail
        self.writers: list[int] = []

    @hookimpl
    def save_checkpoint(self, path: str) -> None:
        self.writers.append(self.runtime.global_ordinal())
        if self.fail:
            raise OSError(28, "No space left on device")
        return None


# --------------------------------------------------------------------------- when XLA counts as in use


def test_without_torch_xla_imported_xla_is_not_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch_xla", raising=False)
    assert xla_in_use() is False


def test_xla_is_in_use_once_the_runtime_is_initialized(fake_xla: FakeXLA) -> None:
    fake_xla.initialized = False  # imported, but no XLA device used yet (e.g. before xmp.spawn)
    assert xla_in_use() is False
    fake_xla.initialized = True
    assert xla_in_use() is True


def test_a_half_imported_or_failing_torch_xla_counts_as_not_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_xla", types.ModuleType("torch_xla"))
    assert xla_in_use() is False

    def broken() -> bool:
        raise RuntimeError("no PJRT")

    broken_module = types.ModuleType("torch_xla")
    broken_module._XLAC = types.SimpleNamespace(_xla_runtime_is_initialized=broken)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_xla", broken_module)
    assert xla_in_use() is False


# --------------------------------------------------------------------------- the backend selection rule


def test_without_xla_the_torch_backend_stays_the_default(xla_host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch_xla", raising=False)
    specs = {spec.name: spec for _, spec in xla_host.checkpoint_io_specs()}
    assert specs["xla"].priority == ckpthooks_xla.plugin.PRIORITY_IDLE < specs["torch"].priority
    assert specs["xla"].protocols == ("*",)
    assert type(xla_host.checkpoint_io_for("/tmp/a.ckpt")) is TorchCheckpointIO


def test_while_xla_is_in_use_the_xla_backend_wins_for_every_protocol(xla_host: PluginHost, fake_xla: FakeXLA) -> None:
    specs = {spec.name: spec for _, spec in xla_host.checkpoint_io_specs()}
    assert specs["xla"].priority == ckpthooks_xla.plugin.PRIORITY_IN_USE > specs["torch"].priority
    assert type(xla_host.checkpoint_io_for("/tmp/a.ckpt")) is XLACheckpointIO
    assert type(xla_host.checkpoint_io_for("memory://run/a.ckpt")) is XLACheckpointIO


def test_an_explicit_xla_backend_is_used_without_the_plugin(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, checkpoint_io=XLACheckpointIO(), enable_checkpointing=False, save_rng_state=False)
    ckpt.track(model=model)
    assert ckpt.store.io_for(str(tmp_path / "a.ckpt")).__class__ is XLACheckpointIO
    manifest = ckpt.save_checkpoint(tmp_path / "a.ckpt")
    assert manifest is not None and manifest.size == (tmp_path / "a.ckpt").stat().st_size
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert torch.equal(loaded["state_dict"]["weight"], model.weight)


# --------------------------------------------------------------------------- ranks from ordinals


def test_no_context_while_xla_is_not_in_use(xla_host: PluginHost, fake_xla: FakeXLA) -> None:
    fake_xla.initialized = False
    assert xla_host.distributed_context() is None
    assert global_rank(xla_host) == 0 and world_size(xla_host) == 1


def test_one_ordinal_leaves_ranks_to_the_launcher_variables(
    xla_host: PluginHost, fake_xla: FakeXLA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchrun with PJRT_DEVICE=CPU: every process is an XLA world of one, ordinal 0
    fake_xla.runtime.world = 1
    monkeypatch.setenv("RANK", "1")
    assert xla_host.distributed_context() is None
    assert global_rank(xla_host) == 1
    assert not is_global_zero(xla_host)


def test_several_ordinals_make_the_ordinal_the_rank(xla_host: PluginHost, fake_xla: FakeXLA) -> None:
    context = xla_host.distributed_context()
    assert isinstance(context, XLAContext)
    assert isinstance(context, DistributedContext)
    assert xla_host.distributed_context() is context  # the host keeps it
    ranks = run_ordinals(
        fake_xla, lambda ordinal: (global_rank(xla_host), world_size(xla_host))
    )
    assert ranks == [(0, 2), (1, 2)]


def test_the_context_is_not_asked_while_a_process_group_decides(
    xla_host: PluginHost, fake_xla: FakeXLA, tmp_path: Path
) -> None:
    import torch.distributed as dist

    fake_xla.runtime.local.ordinal = 1  # the plugin's context would say rank 1 of 2
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        assert global_rank(xla_host) == 0
        assert world_size(xla_host) == 1
    finally:
        dist.destroy_process_group()


def test_broadcast_and_barrier_between_ordinal_threads(fake_xla: FakeXLA) -> None:
    context = XLAContext(timeout=30)
    payload = {"path": "/runs/a.ckpt", "metrics": [1.0, 2.0]}

    def body(ordinal: int) -> Any:
        received = context.broadcast_object(payload if ordinal == 0 else None, src=0)
        context.barrier()
        return received

    first, second = run_ordinals(fake_xla, body)
    assert first == second == payload
    assert first is payload and second is not payload  # each ordinal gets its own copy


def test_two_threads_claiming_one_ordinal_are_refused(fake_xla: FakeXLA) -> None:
    exchange = ThreadExchange()

    def body(ordinal: int) -> Any:
        return exchange.exchange(0, 2, ordinal, 5.0, "broadcast")

    started = time.monotonic()
    results = run_ordinals(fake_xla, body)
    assert time.monotonic() - started < 5  # the thread already waiting gives up too
    assert all(isinstance(r, DistributedCheckpointError) for r in results), results
    assert any("claim ordinal 0" in str(r) for r in results)


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKPTHOOKS_XLA_TIMEOUT", raising=False)
    assert ckpthooks_xla.runtime.timeout_from_env() == ckpthooks_xla.runtime.DEFAULT_TIMEOUT
    monkeypatch.setenv("CKPTHOOKS_XLA_TIMEOUT", "2.5")
    assert ckpthooks_xla.runtime.timeout_from_env() == 2.5
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv("CKPTHOOKS_XLA_TIMEOUT", bad)
        with pytest.raises(DistributedCheckpointError, match="CKPTHOOKS_XLA_TIMEOUT"):
            ckpthooks_xla.runtime.timeout_from_env()


# --------------------------------------------------------------------------- saves with two ordinals


@pytest.fixture
def ordinal_host(xla_host: PluginHost, fake_xla: FakeXLA) -> Iterator[tuple[PluginHost, WriteRecorder]]:
    recorder = WriteRecorder(fake_xla.runtime)
    xla_host.register(recorder, name="recorder")
    yield xla_host, recorder


def _checkpointer(root: Path, host: PluginHost) -> Checkpointer:
    torch.manual_seed(0)
    return Checkpointer(root, plugin_host=host, enable_checkpointing=False, save_rng_state=False).track(
        model=torch.nn.Linear(2, 2)
    )


def test_only_the_master_ordinal_writes_and_both_agree(
    tmp_path: Path, fake_xla: FakeXLA, ordinal_host: tuple[PluginHost, WriteRecorder]
) -> None:
    host, recorder = ordinal_host

    def body(ordinal: int) -> Any:
        ckpt = _checkpointer(tmp_path, host)
        manifest = ckpt.save_checkpoint(tmp_path / "a.ckpt")
        return ckpt.is_global_zero, manifest

    (zero, manifest), (other_zero, other_manifest) = run_ordinals(fake_xla, body)
    assert recorder.writers == [0]
    assert zero and not other_zero
    assert manifest is not None and other_manifest is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "a.ckpt.manifest.json"]


def test_a_failed_write_raises_on_every_ordinal(
    tmp_path: Path, fake_xla: FakeXLA, ordinal_host: tuple[PluginHost, WriteRecorder]
) -> None:
    host, recorder = ordinal_host
    recorder.fail = True
    started = time.monotonic()
    results = run_ordinals(fake_xla, lambda ordinal: _checkpointer(tmp_path, host).save_checkpoint(tmp_path / "a.ckpt"))
    assert time.monotonic() - started < 30
    assert recorder.writers == [0]
    writer_error, other_error = results
    assert isinstance(writer_error, OSError), writer_error  # the writer raises its own error
    assert isinstance(other_error, DistributedCheckpointError), other_error
    assert "failed on the writer rank (rank 0)" in str(other_error)
    assert "No space left on device" in str(other_error)
    assert not (tmp_path / "a.ckpt.manifest.json").exists()


def test_an_ordinal_that_skips_a_save_makes_the_other_raise_within_the_timeout(
    tmp_path: Path, fake_xla: FakeXLA, ordinal_host: tuple[PluginHost, WriteRecorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    host, _ = ordinal_host
    monkeypatch.setenv("CKPTHOOKS_XLA_TIMEOUT", "2")

    def body(ordinal: int) -> Any:
        ckpt = _checkpointer(tmp_path, host)
        if ordinal == 0:  # e.g. a save under `if xm.is_master_ordinal():`
            ckpt.save_checkpoint(tmp_path / "a.ckpt")
        return "done"

    started = time.monotonic()
    writer, other = run_ordinals(fake_xla, body)
    assert time.monotonic() - started < 30
    assert other == "done"
    assert isinstance(writer, DistributedCheckpointError), writer
    assert "waited 2 s for ordinal(s) 1" in str(writer)
