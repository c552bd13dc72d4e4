"""The ``distributed_context`` hook: a plugin supplies ranks when torch.distributed is not initialized."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer, hookimpl, rank_zero_only
from ckpthooks import _distributed as distributed
from ckpthooks._distributed import DistributedContext
from ckpthooks._plugin_host import PluginHost, set_plugin_host
from ckpthooks.exceptions import DistributedCheckpointError


class FakeContext:
    """A world of ``world`` ranks seen from ``rank``; collectives answer from a script."""

    def __init__(self, rank: int, world: int = 2, broadcasts: list[Any] | None = None) -> None:
        self._rank = rank
        self._world = world
        self.broadcasts = list(broadcasts or [])
        self.calls: list[str] = []

    def rank(self) -> int:
        return self._rank

    def world_size(self) -> int:
        return self._world

    def broadcast_object(self, obj: Any, src: int) -> Any:
        self.calls.append(f"broadcast from {src}")
        return obj if self._rank == src else self.broadcasts.pop(0)

    def barrier(self) -> None:
        self.calls.append("barrier")


class ContextPlugin:
    def __init__(self, context: DistributedContext | None) -> None:
        self.context = context
        self.asked = 0

    @hookimpl
    def distributed_context(self) -> DistributedContext | None:
        self.asked += 1
        return self.context


@pytest.fixture
def host() -> PluginHost:
    return PluginHost(load_entry_points=False)


@pytest.fixture(autouse=True)
def _no_launcher_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(distributed, "_steps", {})


def test_without_a_plugin_ranks_come_from_launcher_variables(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    assert host.distributed_context() is None
    assert (distributed.global_rank(host), distributed.world_size(host)) == (0, 1)
    monkeypatch.setenv("RANK", "3")
    assert distributed.global_rank(host) == 3


def test_a_plugin_context_decides_the_rank_and_the_world(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")  # the context wins over launcher variables
    host.register(ContextPlugin(FakeContext(rank=1, world=2)), name="ctx")
    assert distributed.global_rank(host) == 1
    assert distributed.world_size(host) == 2
    assert not distributed.is_global_zero(host)
    ckpt = Checkpointer(plugin_host=host, enable_checkpointing=False)
    assert (ckpt.global_rank, ckpt.world_size, ckpt.is_global_zero) == (1, 2, False)


def test_collectives_go_through_the_context(host: PluginHost) -> None:
    context = FakeContext(rank=1, world=2, broadcasts=["from rank 0"])
    host.register(ContextPlugin(context), name="ctx")
    assert distributed.broadcast_object("mine", host=host) == "from rank 0"
    distributed.barrier(host)
    assert context.calls == ["broadcast from 0", "barrier"]


def test_a_context_of_one_rank_needs_no_collective(host: PluginHost) -> None:
    context = FakeContext(rank=0, world=1)
    host.register(ContextPlugin(context), name="ctx")
    assert distributed.broadcast_object("x", host=host) == "x"
    distributed.barrier(host)
    distributed.agree_on_outcome(None, "saving x", host=host)
    assert context.calls == []


class ThreadWorld:
    """Ranks as threads of this process, meeting at a barrier (as XLA ordinals under xmp.spawn do)."""

    def __init__(self, world: int = 2) -> None:
        self.world = world
        self.local = threading.local()
        self.meet = threading.Barrier(world, timeout=30)
        self.slot: Any = None


class ThreadContext:
    def __init__(self, world: ThreadWorld) -> None:
        self.w = world

    def rank(self) -> int:
        return int(self.w.local.rank)

    def world_size(self) -> int:
        return self.w.world

    def broadcast_object(self, obj: Any, src: int) -> Any:
        if self.rank() == src:
            self.w.slot = obj
        self.w.meet.wait()
        value = copy.deepcopy(self.w.slot)
        self.w.meet.wait()  # nobody overwrites the slot before every rank has read it
        return value

    def barrier(self) -> None:
        self.w.meet.wait()


class FailingWrites:
    def __init__(self) -> None:
        self.writers: list[int] = []
        self.fail = False

    @hookimpl
    def save_checkpoint(self, path: str) -> None:
        self.writers.append(int(world.local.rank))
        if self.fail:
            raise OSError(28, "No space left on device")


world = ThreadWorld()


def _run_ranks(target: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * world.world

    def body(rank: int) -> None:
        world.local.rank = rank
        try:
            results[rank] = target(rank)
        except BaseException as exc:
            results[rank] = exc

    threads = [threading.Thread(target=body, args=(rank,), daemon=True) for rank in range(world.world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a rank hangs"
    return results


@pytest.mark.parametrize("fail", [False, True])
def test_ranks_from_a_context_write_once_and_share_the_outcome(tmp_path: Path, host: PluginHost, fail: bool) -> None:
    writes = FailingWrites()
    writes.fail = fail
    host.register(ContextPlugin(ThreadContext(world)), name="ctx")
    host.register(writes, name="writes")

    def save(rank: int) -> Any:
        ckpt = Checkpointer(tmp_path, plugin_host=host, enable_checkpointing=False, save_rng_state=False)
        return ckpt.track(model=torch.nn.Linear(2, 2)).save_checkpoint(tmp_path / "a.ckpt")

    writer, other = _run_ranks(save)
    assert writes.writers == [0]
    if fail:
        assert isinstance(writer, OSError)
        assert isinstance(other, DistributedCheckpointError)
        assert "failed on the writer rank (rank 0)" in str(other) and "No space left" in str(other)
    else:
        assert writer is not None and writer.file == "a.ckpt"  # the manifest, on the writer
        assert other is None
        assert (tmp_path / "a.ckpt.manifest.json").exists()


def test_a_returned_context_is_kept_until_the_plugins_change(host: PluginHost) -> None:
    plugin = ContextPlugin(FakeContext(rank=0))
    host.register(plugin, name="ctx")
    for _ in range(5):
        distributed.global_rank(host)
        distributed.world_size(host)
    assert plugin.asked == 1
    host.register(object(), name="another")  # registering anything asks again
    distributed.global_rank(host)
    assert plugin.asked == 2


def test_a_plugin_that_passes_is_asked_again(host: PluginHost) -> None:
    # its runtime may start later (XLA: at the first use of a device)
    plugin = ContextPlugin(None)
    host.register(plugin, name="ctx")
    distributed.global_rank(host)
    distributed.global_rank(host)
    assert plugin.asked == 2
    plugin.context = FakeContext(rank=1)
    assert distributed.global_rank(host) == 1
    distributed.global_rank(host)
    assert plugin.asked == 3


def test_an_initialized_process_group_is_never_overridden(host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> None:
    class Group:
        @staticmethod
        def get_rank() -> int:
            return 0

        @staticmethod
        def get_world_size() -> int:
            return 1

    plugin = ContextPlugin(FakeContext(rank=1))
    host.register(plugin, name="ctx")
    monkeypatch.setattr(distributed, "_dist", lambda: Group)
    assert distributed.global_rank(host) == 0
    assert plugin.asked == 0  # not even asked


def test_rank_zero_only_uses_the_shared_hosts_context() -> None:
    host = PluginHost(load_entry_points=False)
    host.register(ContextPlugin(FakeContext(rank=1)), name="ctx")
    previous = set_plugin_host(host)
    try:

        @rank_zero_only
        def report() -> str:
            return "ran"

        assert report() is None
    finally:
        set_plugin_host(previous)


def test_the_protocol_is_runtime_checkable() -> None:
    assert isinstance(FakeContext(rank=0), DistributedContext)
    assert not isinstance(object(), DistributedContext)
