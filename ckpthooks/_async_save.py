"""Asynchronous saving: the training thread only copies the state; a worker writes and commits it.

With ``Checkpointer(async_save=True)`` a save (1) builds the checkpoint dict as usual, (2) waits
while ``max_in_flight`` saves are still being written (back-pressure: memory holds at most that many
snapshots), (3) copies every tensor off the live objects — to CPU, through pinned memory when CUDA
is present — and (4) hands the snapshot to a single worker thread, which writes it, commits it and
only then runs the commit callbacks (so pruning and "last"/"best" bookkeeping follow the commit they
depend on, in order). A background failure is never swallowed: it is raised by the next save, by
:meth:`~ckpthooks.Checkpointer.wait`, or by :meth:`~ckpthooks.Checkpointer.close`; at interpreter
exit pending saves are flushed and a failure is logged at ERROR level.

The copy goes into buffers that are already in memory whenever possible: a :class:`BufferPool`
holds flat byte buffers by size, filled by the snapshots already written and, before the first
save, by a background warm-up (:meth:`AsyncSaver.warm_up`, started by
:meth:`~ckpthooks.Checkpointer.fit_start`) that allocates and touches one buffer per tensor of the
tracked model and optimizers. Fresh memory costs a page fault per page, which makes a copy several
times slower than copying into touched memory. CPU tensors are copied with ``memmove`` on the
calling thread: torch's ``copy_`` hands each large tensor to its intra-op thread pool, which costs
more than it gains on a small or busy machine, and changing torch's thread count around the copy is
not an option, since it is process-wide (a thread whose first parallel operation runs meanwhile keeps
one thread for good).
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: (size in bytes, pinned): what tells pooled buffers apart
BufferKey = tuple[int, bool]
#: a buffer a snapshot copied into: the flat ``uint8`` tensor and whether it is pinned
Buffer = tuple["torch.Tensor", bool]

#: the warm-up touches a buffer this many bytes at a time, and may be stopped in between
TOUCH_CHUNK = 16 << 20
#: A snapshot copying at least this many bytes of CPU tensors copies them on two threads
PARALLEL_COPY_BYTES = 32 << 20


class BufferPool:
    """Flat ``uint8`` CPU tensors that snapshots copy into, found by size in bytes (and pinned or not).

    A buffer serves any tensor of its size: the snapshot views it with the tensor's dtype, shape
    and strides. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: dict[BufferKey, list[torch.Tensor]] = {}
        self._nbytes = 0

    def put(self, buffer: torch.Tensor, pinned: bool) -> None:
        with self._lock:
            self._free.setdefault((buffer.numel(), pinned), []).append(buffer)
            self._nbytes += buffer.numel()

    def take(self, nbytes: int, pinned: bool) -> torch.Tensor | None:
        """A buffer of exactly ``nbytes`` (removed from the pool), or ``None``."""
        with self._lock:
            found = self._free.get((nbytes, pinned))
            if not found:
                return None
            buffer = found.pop()
            if not found:
                del self._free[(nbytes, pinned)]
            self._nbytes -= nbytes
            return buffer

    def trim(self, keep_bytes: int) -> None:
        """Drop buffers, the largest first, until at most ``keep_bytes`` are held."""
        with self._lock:
            for key in sorted(self._free, reverse=True):
                found = self._free[key]
                while found and self._nbytes > keep_bytes:
                    found.pop()
                    self._nbytes -= key[0]
                if not found:
                    del self._free[key]

    def clear(self) -> None:
        self.trim(0)

    def buffers(self) -> list[torch.Tensor]:
        """The buffers held now."""
        with self._lock:
            return [buffer for found in self._free.values() for buffer in found]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes


def _poolable(tensor: torch.Tensor) -> bool:
    """A plain strided CPU or CUDA tensor: one whose copy can go into a pooled buffer."""
    import torch

    return (
        type(tensor) in (torch.Tensor, torch.nn.Parameter)
        and tensor.layout == torch.strided
        and tensor.device.type in ("cpu", "cuda")
        and not tensor.is_quantized
        and not tensor.is_conj()
        and not tensor.is_neg()
    )


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides: list[int] = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _dense_strides(tensor: torch.Tensor) -> tuple[bool, tuple[int, ...]]:
    """Whether ``tensor`` fills its memory span without gaps or overlaps, and the strides of its
    copy: the tensor's own when it is dense (so a permuted layout survives, as with
    ``tensor.to(copy=True)``), contiguous ones otherwise."""
    shape, strides = tuple(tensor.shape), tuple(tensor.stride())
    if tensor.numel() == 0:
        return False, _contiguous_strides(shape)
    expected = 1
    for stride, size in sorted((st, si) for si, st in zip(shape, strides) if si != 1):
        if stride != expected:
            return False, _contiguous_strides(shape)
        expected *= size
    return True, strides


def _identity(tensor: torch.Tensor) -> Any:
    """Tensors with the same identity are copied once and share the copy: the same object, or
    the same view of the same memory (``state_dict()`` returns a new tensor object per key, so
    tied weights arrive as two objects)."""
    if tensor.numel() and _poolable(tensor):
        return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
    return id(tensor)


def _copy_into(out: torch.Tensor, source: torch.Tensor, dense: bool, moves: list[tuple[int, int, int]]) -> None:
    """Copy ``source`` into ``out`` (same dtype and shape; the same strides when ``dense``). A dense
    CPU copy is only listed in ``moves`` (destination, source, bytes), for :func:`_move_all`."""
    if source.is_cuda:
        out.copy_(source, non_blocking=True)
    elif dense:
        moves.append((out.data_ptr(), source.data_ptr(), source.numel() * source.element_size()))
    else:
        out.copy_(source)


def _move_all(moves: list[tuple[int, int, int]]) -> None:
    """``memmove`` each (destination, source, bytes); with enough bytes and more than one CPU core,
    half the bytes on a second thread (``memmove`` through ctypes releases the GIL; measured here,
    512 MiB into touched buffers: 47 ms on one thread, 35-40 ms on two)."""

    def run(group: Sequence[tuple[int, int, int]]) -> None:
        for destination, source, nbytes in group:
            ctypes.memmove(destination, source, nbytes)

    total = sum(nbytes for _, _, nbytes in moves)
    if total < PARALLEL_COPY_BYTES or (os.cpu_count() or 1) < 2:
        run(moves)
        return
    groups: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]] = ([], [])
    loads = [0, 0]
    for move in sorted(moves, key=lambda m: -m[2]):  # largest first, each onto the lighter half
        lighter = 0 if loads[0] <= loads[1] else 1
        groups[lighter].append(move)
        loads[lighter] += move[2]
    helper = threading.Thread(target=run, args=(groups[1],), name="ckpthooks-snapshot-copy", daemon=True)
    try:
        helper.start()
    except RuntimeError:  # no thread can be started (interpreter exit): copy on this one
        run(moves)
        return
    try:
        run(groups[0])
    finally:
        helper.join()


def snapshot(obj: Any, pool: BufferPool | None = None, keep_spare: int = 0) -> tuple[Any, list[Buffer]]:
    """A copy of a checkpoint dict that shares no tensor or container with the live objects.

    Tensors are copied to CPU (pinned memory and a non-blocking copy for CUDA tensors) into flat
    buffers taken from ``pool`` when it has one of the right size, allocated otherwise; pool
    buffers left over are dropped before any allocation, except ``keep_spare`` snapshots' worth
    of bytes. A tensor reached twice (tied weights) is copied once, so the sharing survives.
    Returns the copy and the buffers it lives in (to give back to the pool once written).
    """
    import torch

    keys: dict[int, Any] = {}
    sources: dict[Any, torch.Tensor] = {}

    def collect(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if id(value) not in keys:
                key = keys[id(value)] = _identity(value)
                sources.setdefault(key, value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    collect(obj)
    # (key, detached tensor, its pool buffer or None, whether it goes into a flat buffer)
    plans: list[tuple[Any, torch.Tensor, torch.Tensor | None, bool]] = []
    needed = 0
    for key, source in sources.items():
        tensor = source.detach()
        base = None
        poolable = _poolable(tensor)
        if poolable and pool is not None:
            nbytes = tensor.numel() * tensor.element_size()
            needed += nbytes
            base = pool.take(nbytes, tensor.is_cuda) if nbytes else None
        plans.append((key, tensor, base, poolable))
    if pool is not None:
        pool.trim(keep_spare * needed)

    copies: dict[Any, torch.Tensor] = {}
    buffers: list[Buffer] = []
    moves: list[tuple[int, int, int]] = []
    copied_from_cuda = False
    waiting = deque(plans)
    try:
        while waiting:
            key, tensor, base, poolable = waiting.popleft()
            if not poolable:
                copies[key] = tensor.to("cpu", copy=True)
                continue
            pinned = tensor.is_cuda
            if base is None:
                base = torch.empty(tensor.numel() * tensor.element_size(), dtype=torch.uint8, pin_memory=pinned)
            buffers.append((base, pinned))
            dense, strides = _dense_strides(tensor)
            flat = base if tensor.dtype == torch.uint8 else base.view(tensor.dtype)
            out = flat.as_strided(tuple(tensor.shape), strides)
            _copy_into(out, tensor, dense, moves)
            copied_from_cuda = copied_from_cuda or pinned
            copies[key] = out
        _move_all(moves)
        if copied_from_cuda:
            torch.cuda.synchronize()
    except BaseException:
        if pool is not None and not copied_from_cuda:  # unreferenced, no copy into them pending
            untouched = [(base, tensor.is_cuda) for _, tensor, base, _ in waiting if base is not None]
            for base, pinned in buffers + untouched:
                pool.put(base, pinned)
        raise

    def rebuild(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return copies[keys[id(value)]]
        if isinstance(value, dict):
            if type(value) is dict:
                return {k: rebuild(v) for k, v in value.items()}
            out_dict = type(value)((k, rebuild(v)) for k, v in value.items())
            extra = getattr(value, "__dict__", None)
            if extra:  # a state_dict's OrderedDict carries ``_metadata`` (module versions)
                out_dict.__dict__.update(deepcopy(extra))
            return out_dict
        if isinstance(value, list):
            return [rebuild(v) for v in value]
        if isinstance(value, tuple):
            return tuple(rebuild(v) for v in value)
        return value

    return rebuild(obj), buffers


# ------------------------------------------------------------------------------------- warm-up
def _is_optimizer(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.optim.Optimizer)


def _state_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors of a module's state (parameters, persistent buffers) or an optimizer's state."""
    import torch

    if isinstance(obj, torch.nn.Module):
        for module in obj.modules():
            yield from (p for p in module._parameters.values() if p is not None)
            skip: set[str] = getattr(module, "_non_persistent_buffers_set", set())
            yield from (b for name, b in module._buffers.items() if b is not None and name not in skip)
    elif _is_optimizer(obj):
        for state in list(obj.state.values()):
            if isinstance(state, dict):
                yield from (v for v in list(state.values()) if isinstance(v, torch.Tensor))


def buffer_keys(objects: Iterable[Any]) -> list[BufferKey]:
    """The pooled buffers a snapshot of these objects' state needs: one per distinct tensor of a
    module (parameters, persistent buffers) or an optimizer's state. Other objects add nothing;
    an object whose tensors cannot be listed is skipped."""
    seen: set[Any] = set()
    found: list[BufferKey] = []
    for obj in objects:
        try:
            for tensor in _state_tensors(obj):
                if not _poolable(tensor):  # also uninitialized (lazy) and meta parameters
                    continue
                identity = _identity(tensor)
                nbytes = tensor.numel() * tensor.element_size()
                if nbytes and identity not in seen:
                    seen.add(identity)
                    found.append((nbytes, tensor.is_cuda))
        except Exception as exc:
            log.debug("not warming up snapshot buffers for %s: %s", type(obj).__name__, exc)
    return found


def _touch(buffer: torch.Tensor, stop: threading.Event) -> None:
    """Write ``buffer`` (``memset``, which releases the GIL), so that the kernel maps its memory now."""
    address, size = buffer.data_ptr(), buffer.numel()
    for start in range(0, size, TOUCH_CHUNK):
        if stop.is_set():
            return
        ctypes.memset(address + start, 0, min(TOUCH_CHUNK, size - start))


class _WarmUp:
    """Allocates and touches pool buffers on a background thread, until stopped.

    The thread runs while there is work queued; :meth:`add` queues more (from the training thread,
    e.g. after an optimizer's first step created its state). :meth:`stop` is final: it removes the
    optimizer hooks, drops the queue and joins the thread (which stops within one chunk); buffers
    allocated so far stay in the pool.
    """

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self._queue: deque[BufferKey] = deque()
        self._thread: threading.Thread | None = None
        self._hooks: list[Any] = []
        #: bytes queued in total (allocated or not yet)
        self.queued_bytes = 0

    def add(self, keys: Sequence[BufferKey]) -> None:
        with self._lock:
            if self.stopped.is_set() or not keys:
                return
            self._queue.extend(keys)
            self.queued_bytes += sum(nbytes for nbytes, _ in keys)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ckpthooks-warm-up", daemon=True)
                self._thread.start()

    def watch_first_step(self, optimizer: Any) -> None:
        """Queue the optimizer's state once its first ``step()`` has created it."""
        register = getattr(optimizer, "register_step_post_hook", None)
        if not callable(register):
            return
        warm_up = weakref.ref(self)
        fired = False

        def after_step(opt: Any, args: Any, kwargs: Any) -> None:
            nonlocal fired
            this = warm_up()
            if fired or this is None or this.stopped.is_set():
                return
            fired = True  # removed by stop(): torch iterates its hooks while this one runs
            this.add(buffer_keys([opt]))

        self._hooks.append(register(after_step))

    def _run(self) -> None:
        import torch

        while True:
            with self._lock:
                if self.stopped.is_set() or not self._queue:
                    self._thread = None
                    return
                nbytes, pinned = self._queue.popleft()
            try:
                buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
                _touch(buffer, self.stopped)
            except Exception as exc:
                log.warning("warming up snapshot buffers failed (the first save allocates its own): %s", exc)
                with self._lock:
                    self._queue.clear()
                    self._thread = None
                return
            self.pool.put(buffer, pinned)

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the queued work is done (or ``timeout`` seconds); whether it is."""
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.running

    def stop(self) -> None:
        self.stopped.set()
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook.remove()
        with self._lock:
            self._queue.clear()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


# ------------------------------------------------------------------------------------- saver
def _started() -> None:
    """A no-op task: submitting it starts the executor's worker thread."""


class AsyncSaver:
    """One worker thread, at most ``max_in_flight`` saves queued or running."""

    def __init__(self, max_in_flight: int = 1) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpthooks-save")
        self._pending: deque[Future[Any]] = deque()
        self._errors: deque[BaseException] = deque()
        self._lock = threading.Lock()
        #: buffers that snapshots copy into: warmed up ahead of the first save, then the buffers
        #: of snapshots already written
        self.pool = BufferPool()
        self._warm_up: _WarmUp | None = None
        self._snapshots = 0
        self._closed = False
        _live.add(self)

    def warm_up(self, objects: Sequence[Any]) -> None:
        """Allocate and touch, on a background thread, a buffer for every tensor of these objects'
        state (modules and optimizers), so that the first snapshot copies into touched memory.

        Runs at most once, and only before the first snapshot. An optimizer without state yet is
        watched instead: its state is warmed up after its first ``step()`` created it. The first
        snapshot stops the warm-up (it waits at most for the chunk being touched) and takes
        whatever is ready; anything else it allocates itself.
        """
        if self._warm_up is not None or self._snapshots or self._closed:
            return
        self._executor.submit(_started)  # the worker thread starts now, not in the first save
        warm = self._warm_up = _WarmUp(self.pool)
        for obj in objects:
            if _is_optimizer(obj) and not obj.state:
                warm.watch_first_step(obj)
        warm.add(buffer_keys(objects))

    @property
    def warming_up(self) -> bool:
        """Whether the warm-up thread is running now."""
        return self._warm_up is not None and self._warm_up.running

    def join_warm_up(self, timeout: float | None = None) -> bool:
        """Wait until the buffers queued so far are warm (or ``timeout`` seconds); whether they are."""
        return self._warm_up is None or self._warm_up.join(timeout)

    def stop_warm_up(self) -> None:
        """Stop the warm-up for good and wait for its thread (a no-op when there is none)."""
        if self._warm_up is not None:
            self._warm_up.stop()

    def snapshot(self, checkpoint: Any) -> tuple[Any, list[Buffer]]:
        """:func:`snapshot` of ``checkpoint`` with this saver's pool; the pool keeps spare buffers
        only as far as ``max_in_flight`` allows."""
        self.stop_warm_up()
        spare = max(0, self.max_in_flight - 1 - self.in_flight)
        self._snapshots += 1
        return snapshot(checkpoint, self.pool, keep_spare=spare)

    def _reap(self, block_until: int) -> None:
        """Wait until at most ``block_until`` saves are pending; record their failures."""
        while True:
            with self._lock:
                if len(self._pending) <= block_until:
                    return
                oldest = self._pending[0]
            try:
                oldest.result()
            except BaseException as exc:
                self._errors.append(exc)
            with self._lock:
                if self._pending and self._pending[0] is oldest:
                    self._pending.popleft()

    def wait_for_slot(self) -> None:
        """Back-pressure: wait until another save may start."""
        self._reap(self.max_in_flight - 1)

    def submit(self, work: Callable[[], Any]) -> None:
        future = self._executor.submit(work)
        with self._lock:
            self._pending.append(future)

    def give_back(self, buffers: list[Buffer]) -> None:
        """Called by the worker once a snapshot is written: its buffers may be reused."""
        for buffer, pinned in buffers:
            self.pool.put(buffer, pinned)

    def take_error(self) -> BaseException | None:
        """The oldest recorded background failure (removed), or ``None``."""
        return self._errors.popleft() if self._errors else None

    def wait(self) -> None:
        """Wait for every pending save; failures are recorded, see :meth:`take_error`."""
        self._reap(0)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(not f.done() for f in self._pending)

    def shutdown(self) -> None:
        """Stop the warm-up, wait for every pending save, stop the worker and free the buffers."""
        self._closed = True
        self.stop_warm_up()
        self.wait()
        self._executor.shutdown(wait=True)
        self.pool.clear()


_live: weakref.WeakSet[AsyncSaver] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for saver in list(_live):
        saver.stop_warm_up()
        saver.wait()
        while (error := saver.take_error()) is not None:
            log.error("a checkpoint save that was still running at exit failed: %s", error)
