"""Async saving's snapshot copy and the warm-up of its buffers ahead of the first save."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import ckpthooks._async_save as async_save
from ckpthooks import Checkpointer
from ckpthooks._async_save import BufferPool, snapshot
from ckpthooks._store import CheckpointStore


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)


def assert_same(saved: Any, live: Any, where: str = "") -> None:
    if isinstance(live, torch.Tensor):
        assert isinstance(saved, torch.Tensor), where
        assert saved.dtype == live.dtype and saved.shape == live.shape, where
        assert torch.equal(saved.cpu(), live.detach().cpu()), where
    elif isinstance(live, dict):
        assert type(saved) is type(live) and list(saved) == list(live), where
        for key in live:
            assert_same(saved[key], live[key], f"{where}[{key!r}]")
    elif isinstance(live, (list, tuple)):
        assert type(saved) is type(live) and len(saved) == len(live), where
        for index, (a, b) in enumerate(zip(saved, live)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert saved == live, where


def memory_span(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = memory_span(a), memory_span(b)
    return a0 < b1 and b0 < a1 and a1 > a0 and b1 > b0


def live_state() -> dict[str, Any]:
    torch.manual_seed(0)
    weights: OrderedDict[str, torch.Tensor] = OrderedDict(w=torch.randn(300, 20), b=torch.randn(20))
    weights._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    return {
        "state_dict": weights,
        "bf16": torch.randn(64, 64).to(torch.bfloat16),
        "half": torch.randn(70).half(),
        "int64": torch.arange(1000),
        "bool": torch.rand(33) > 0.5,
        "complex": torch.randn(40, dtype=torch.complex64),
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.empty(0, 3),
        "bytes": torch.randint(0, 255, (513,), dtype=torch.uint8),
        "transposed": torch.randn(50, 70).t(),
        "sliced": torch.randn(100, 100)[::2, 5:60],
        "expanded": torch.randn(5, 1).expand(5, 4),
        "conj": torch.randn(4, dtype=torch.complex64).conj(),
        "parameter": nn.Parameter(torch.randn(3)),
        "nested": [torch.randn(2), (torch.randn(3), {"deep": torch.randn(4)}), "text", 7],
        "plain": {"epoch": 3, "name": "x"},
    }


# ------------------------------------------------------------------------------------- snapshot
def test_a_snapshot_equals_the_live_state_and_shares_no_memory_with_it() -> None:
    live = live_state()
    copy, _ = snapshot(live)
    assert_same(copy, live)
    assert copy["state_dict"]._metadata == {"": {"version": 1}}
    assert copy["state_dict"]._metadata is not live["state_dict"]._metadata
    assert copy["nested"] is not live["nested"] and copy["plain"] is not live["plain"]
    copies, originals = list(tensors_in(copy)), list(tensors_in(live))
    for c in copies:
        assert c.device.type == "cpu" and not c.requires_grad
        assert not any(overlaps(c, o) for o in originals if o.numel() and c.numel())
    assert copy["transposed"].stride() == live["transposed"].stride()  # a dense layout survives
    assert copy["sliced"].is_contiguous()  # a view with gaps is copied compactly

    before = [c.clone() for c in copies]
    with torch.no_grad():
        for o in originals:
            if o.dtype.is_floating_point and o.numel() and 0 not in o.stride():
                o.add_(1)  # training goes on
    assert all(torch.equal(a, b) for a, b in zip(copies, before))
    reference = live_state()
    for c in copies:
        if c.is_floating_point():
            c.zero_()  # the writer owns the copy
    assert_same(live["int64"], reference["int64"])
    assert torch.equal(live["state_dict"]["w"], reference["state_dict"]["w"] + 1)


def test_tied_weights_share_one_copy() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    state = model.state_dict()
    assert state["0.weight"] is not state["1.weight"]  # state_dict returns one tensor object per key
    copy, buffers = snapshot(state)
    assert copy["0.weight"] is copy["1.weight"] and len(buffers) == 1


def test_dense_cpu_tensors_are_copied_on_the_calling_thread_without_torch_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's ``copy_``/``to`` hand large tensors to its intra-op thread pool."""
    calls: list[str] = []
    real_copy, real_to = torch.Tensor.copy_, torch.Tensor.to

    def copy_(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append("copy_")
        return real_copy(self, *args, **kwargs)

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append("to")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "copy_", copy_)
    monkeypatch.setattr(torch.Tensor, "to", to)
    live = {
        "big": torch.randn(1 << 20),
        "transposed": torch.randn(512, 300).t(),
        "bf16": torch.randn(99, 99).bfloat16(),
    }
    copy, _ = snapshot(live)
    monkeypatch.undo()
    assert calls == []
    assert_same(copy, live)


@pytest.fixture
def two_torch_threads() -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def test_torch_thread_count_is_unchanged_by_a_snapshot_also_when_the_copy_fails(
    monkeypatch: pytest.MonkeyPatch, two_torch_threads: int
) -> None:
    live = {"a": torch.randn(1 << 16), "b": torch.randn(1 << 16)}
    snapshot(live)
    assert torch.get_num_threads() == two_torch_threads

    pool = BufferPool()
    warm, _ = snapshot(live, pool)
    pool.put(warm["a"].view(torch.uint8).reshape(-1), False)
    pool.put(warm["b"].view(torch.uint8).reshape(-1), False)
    real_copy = async_save._copy_into
    copied: list[int] = []

    def failing(out: torch.Tensor, source: torch.Tensor, dense: bool, moves: list[Any]) -> None:
        if copied:
            raise RuntimeError("injected copy failure")
        copied.append(1)
        real_copy(out, source, dense, moves)

    monkeypatch.setattr(async_save, "_copy_into", failing)
    with pytest.raises(RuntimeError, match="injected"):
        snapshot(live, pool)
    assert torch.get_num_threads() == two_torch_threads
    assert pool.nbytes == 2 * (1 << 16) * 4  # the buffers it took went back


def test_a_thread_starting_torch_work_during_a_snapshot_keeps_torchs_thread_count(
    monkeypatch: pytest.MonkeyPatch, two_torch_threads: int
) -> None:
    """``torch.set_num_threads`` is process-wide: a thread whose first parallel operation runs
    while it is lowered keeps the lower count for good."""
    seen: list[int] = []
    real_copy = async_save._copy_into

    def first_work_elsewhere() -> None:
        torch.ones(1 << 20).add_(1)
        seen.append(torch.get_num_threads())

    def copy_into(out: torch.Tensor, source: torch.Tensor, dense: bool, moves: list[Any]) -> None:
        if not seen:
            other = threading.Thread(target=first_work_elsewhere)
            other.start()
            other.join()
        real_copy(out, source, dense, moves)

    monkeypatch.setattr(async_save, "_copy_into", copy_into)
    snapshot({"a": torch.randn(1 << 20)})
    assert seen == [two_torch_threads]


def test_pool_buffers_are_matched_by_size_not_by_position_or_shape() -> None:
    pool = BufferPool()
    _, buffers = snapshot({"a": torch.randn(3, 4), "b": torch.randn(10)}, pool)
    for buffer, pinned in buffers:
        pool.put(buffer, pinned)
    before = {b.data_ptr() for b, _ in buffers}
    live = {"x": torch.randn(10), "y": torch.arange(12, dtype=torch.int32).reshape(4, 3)}
    second, again = snapshot(live, pool)
    assert {b.data_ptr() for b, _ in again} == before
    assert_same(second, live)


def test_unused_pool_buffers_are_dropped_before_copying_unless_spares_are_allowed() -> None:
    live = {"a": torch.randn(100), "b": torch.randn(50)}
    pool = BufferPool()
    for nbytes in (400, 200, 200, 1000, 8):
        pool.put(torch.empty(nbytes, dtype=torch.uint8), False)
    snapshot(live, pool)
    assert pool.nbytes == 0
    for nbytes in (400, 200, 200, 1000, 8):
        pool.put(torch.empty(nbytes, dtype=torch.uint8), False)
    snapshot(live, pool, keep_spare=1)
    assert pool.nbytes <= 600 and pool.nbytes > 0


# ------------------------------------------------------------------------------------- warm-up
def net() -> tuple[nn.Sequential, torch.optim.AdamW]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    found = list(model.state_dict().values())
    if optimizer is not None:
        found += [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in found)


def make(root: Path, model: nn.Module, optimizer: Any = None, **kwargs: Any) -> Checkpointer:
    ckpt = Checkpointer(root, async_save=True, enable_checkpointing=False, preemption_signals=None, **kwargs)
    return ckpt.track(model=model, optimizers=optimizer)


def capture_saves(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    saved: list[dict[str, Any]] = []
    real_save = CheckpointStore.save

    def save(self: CheckpointStore, checkpoint: Any, path: str, **kwargs: Any) -> Any:
        saved.append(checkpoint)
        return real_save(self, checkpoint, path, **kwargs)

    monkeypatch.setattr(CheckpointStore, "save", save)
    return saved


def training_tensors(checkpoint: dict[str, Any]) -> list[torch.Tensor]:
    return list(tensors_in(checkpoint["state_dict"])) + list(tensors_in(checkpoint["optimizer_states"]))


def storage_ptr(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def warm_up_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ckpthooks-warm-up"]


def blocking_touch(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm-up that never finishes on its own: each buffer waits until the warm-up is stopped."""
    monkeypatch.setattr(async_save, "_touch", lambda buffer, stop: stop.wait(120))


def test_the_first_save_copies_into_the_buffers_warmed_up_at_fit_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, optimizer = net()
    train_step(model, optimizer)  # the optimizer has state already, as after a restore
    ckpt = make(tmp_path, model, optimizer)
    saved = capture_saves(monkeypatch)
    saver = ckpt._async
    assert saver is not None
    ckpt.fit_start()
    assert saver.join_warm_up(60)
    assert saver.pool.nbytes == state_bytes(model, optimizer)  # one buffer per tensor, no more
    warm = {b.data_ptr() for b in saver.pool.buffers()}
    ckpt.fit_start()  # a second fit in the same process does not warm up again
    assert saver.join_warm_up(60) and saver.pool.nbytes == state_bytes(model, optimizer)

    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    ckpt.wait()
    assert {storage_ptr(t) for t in training_tensors(saved[0])} == warm
    assert {b.data_ptr() for b in saver.pool.buffers()} >= warm  # given back for the next save
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert_same(loaded["state_dict"], model.state_dict())
    assert_same(loaded["optimizer_states"], [optimizer.state_dict()])
    ckpt.close()
    assert saver.pool.nbytes == 0


def test_optimizer_state_created_after_fit_start_is_warmed_up_after_the_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, optimizer = net()  # AdamW creates its state in its first step
    ckpt = make(tmp_path, model, optimizer)
    saved = capture_saves(monkeypatch)
    saver = ckpt._async
    assert saver is not None
    ckpt.fit_start()
    assert saver.join_warm_up(60)
    assert saver.pool.nbytes == state_bytes(model)
    train_step(model, optimizer)
    assert saver.join_warm_up(60)
    assert saver.pool.nbytes == state_bytes(model, optimizer)
    train_step(model, optimizer)
    assert saver.join_warm_up(60)
    assert saver.pool.nbytes == state_bytes(model, optimizer)  # once, not at every step
    warm = {b.data_ptr() for b in saver.pool.buffers()}

    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    ckpt.wait()
    assert {storage_ptr(t) for t in training_tensors(saved[0])} == warm
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert_same(loaded["optimizer_states"], [optimizer.state_dict()])
    ckpt.close()
    assert not optimizer._optimizer_step_post_hooks  # the warm-up's hook is gone


def test_state_that_changed_after_the_warm_up_is_saved_as_it_is_and_memory_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, optimizer = net()
    train_step(model, optimizer)
    ckpt = make(tmp_path, model, optimizer)
    saved = capture_saves(monkeypatch)
    saver = ckpt._async
    assert saver is not None
    ckpt.fit_start()
    assert saver.join_warm_up(60)
    model[2] = nn.Linear(128, 16)  # replaced after the warm-up: other shapes
    model.add_module("lazy", nn.LazyLinear(5))
    model.lazy(torch.randn(2, 7))  # materialized after the warm-up
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    ckpt.wait()
    loaded = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert_same(loaded["state_dict"], model.state_dict())
    assert_same(loaded["optimizer_states"], [optimizer.state_dict()])
    storages = {storage_ptr(t): t.untyped_storage().nbytes() for t in tensors_in(saved[0])}
    snapshot_bytes = sum(storages.values())
    assert saver.pool.nbytes == snapshot_bytes  # warmed buffers nothing matched were dropped
    ckpt.close()


def test_the_warm_up_does_not_change_what_is_saved(tmp_path: Path) -> None:
    model, optimizer = net()
    train_step(model, optimizer)
    sync = Checkpointer(tmp_path / "sync", enable_checkpointing=False, preemption_signals=None)
    sync.track(model=model, optimizers=optimizer)
    ckpt = make(tmp_path / "async", model, optimizer)
    ckpt.fit_start()
    assert ckpt._async is not None and ckpt._async.join_warm_up(60)
    sync.save_checkpoint(tmp_path / "sync.ckpt")
    ckpt.save_checkpoint(tmp_path / "async.ckpt")
    ckpt.close()
    assert_same(
        torch.load(tmp_path / "async.ckpt", weights_only=True),
        torch.load(tmp_path / "sync.ckpt", weights_only=True),
    )


def run_with_deadline(fn: Any, seconds: float = 60) -> None:
    """Run ``fn`` on a thread; fail (instead of hanging the suite) when it does not return."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} did not return within {seconds} s"
    if errors:
        raise errors[0]


def test_a_save_before_the_warm_up_finished_is_correct_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocking_touch(monkeypatch)
    model, optimizer = net()
    train_step(model, optimizer)
    ckpt = make(tmp_path, model, optimizer)
    saver = ckpt._async
    assert saver is not None
    ckpt.fit_start()
    assert saver.warming_up
    expected = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    run_with_deadline(lambda: ckpt.save_checkpoint(tmp_path / "a.ckpt"))
    assert not saver.warming_up and not warm_up_threads()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1)
    ckpt.wait()
    assert_same(torch.load(tmp_path / "a.ckpt", weights_only=True)["state_dict"], expected)
    ckpt.close()


def test_close_during_the_warm_up_does_not_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocking_touch(monkeypatch)
    model, optimizer = net()
    ckpt = make(tmp_path, model, optimizer)
    ckpt.fit_start()
    assert ckpt._async is not None and ckpt._async.warming_up
    run_with_deadline(ckpt.close)
    assert not warm_up_threads() and ckpt._async.pool.nbytes == 0
    assert not optimizer._optimizer_step_post_hooks
    ckpt.fit_start()  # after close: nothing to warm up for
    assert not ckpt._async.warming_up and ckpt._async.pool.nbytes == 0


def test_an_exception_in_the_loop_stops_the_warm_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocking_touch(monkeypatch)
    model, optimizer = net()
    ckpt = make(tmp_path, model, optimizer)

    def epoch(e: int) -> None:
        raise ValueError("the loop broke")

    def fit() -> None:
        with pytest.raises(ValueError, match="the loop broke"):
            ckpt.fit(epoch, max_epochs=1)

    run_with_deadline(fit)
    assert not warm_up_threads()
    ckpt.close()


def test_a_large_snapshot_copies_on_two_threads_and_every_byte_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above PARALLEL_COPY_BYTES the dense CPU copies are split over the training thread and one
    helper; each copy is exact and shares no memory with its source."""
    monkeypatch.setattr(async_save, "PARALLEL_COPY_BYTES", 1024)
    monkeypatch.setattr(async_save.os, "cpu_count", lambda: 2)
    threads: set[str] = set()
    real_move = async_save.ctypes.memmove

    def memmove(destination: int, source: int, nbytes: int) -> Any:
        threads.add(threading.current_thread().name)
        return real_move(destination, source, nbytes)

    monkeypatch.setattr(async_save.ctypes, "memmove", memmove)
    torch.manual_seed(0)
    live = {f"t{i}": torch.randn(1 + 97 * i) for i in range(40)}
    live["ints"] = torch.arange(1000, dtype=torch.int64)
    copy, _ = snapshot(live)
    assert threads == {threading.current_thread().name, "ckpthooks-snapshot-copy"}
    for key, tensor in live.items():
        assert torch.equal(copy[key], tensor)
        assert copy[key].data_ptr() != tensor.data_ptr()


def test_a_snapshot_copies_on_its_own_thread_when_no_thread_can_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(async_save, "PARALLEL_COPY_BYTES", 1024)
    monkeypatch.setattr(async_save.os, "cpu_count", lambda: 2)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    live = {f"t{i}": torch.randn(500 + i) for i in range(10)}
    copy, _ = snapshot(live)
    for key, tensor in live.items():
        assert torch.equal(copy[key], tensor)
