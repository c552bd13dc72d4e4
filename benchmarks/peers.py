"""Sizes and peers disk.py does not cover: durable sync saves of 2 GiB of state, the other
checkpointing libraries at the state size (torch.distributed.checkpoint, torch-checkpointing), and
20,000 small tensors.

Three parts, one after the other, each with a state of its own built once in this process; every
measurement runs in a forked child (see :func:`benchmarks.common.in_child`), the variants of a part
interleaved, their order rotating with each repetition. Every file is kept until the section ends,
as in disk.py (no block reuse).

    python -m benchmarks.peers --size quick --workdir /tmp/x --out /tmp/x/peers.json
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    MiB,
    fsync_dir,
    fsync_file,
    in_child,
    make_warm,
    peak_rss_bytes,
    progress,
    remove_quietly,
    reset_peak_rss,
    rss_bytes,
    section_args,
    single_threaded_parent,
    trim_heap,
    write_json,
)
from benchmarks.disk import measure_save, outputs_of, rotated, savers
from benchmarks.state import TrainingState, build_state, build_tiny

GiB = 1 << 30
#: bytes of state of the large sync saves, and their repetitions (fewer than the other parts: a
#: torch.save + fsync of 2 GiB takes several seconds on this disk)
LARGE = {"full": 2 * GiB, "quick": 64 * MiB}
LARGE_REPS = 3
LARGE_VARIANTS = ("torch", "ckpthooks", "floor-direct")
#: the small-tensor state: number of float32 tensors and their total bytes
SMALL = {"full": (20_000, 256 * MiB), "quick": (2_000, 16 * MiB)}
#: tensor sizes cycle through these multiples of a base element count (a mix from ~50 to ~12,600
#: elements at the full size)
SMALL_PATTERN = (1, 4, 16, 64, 256)
PEER_VARIANTS = ("ckpthooks", "torch", "dcp", "dcp-async", "tc", "tc-async")
#: free space left to other users of the disk when deciding whether every file can be kept
MARGIN = 4 * GiB


# ------------------------------------------------------------------------------------- helpers
def fsync_tree(folder: str) -> None:
    """fsync every file and folder under ``folder``, then the folder it was created in: what makes
    a checkpoint that is a new folder durable."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in dirs:
            fsync_dir(os.path.join(root, name))
    fsync_dir(folder)
    fsync_dir(os.path.dirname(os.path.abspath(folder)))


def stored_bytes(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)
    return os.path.getsize(path)


def timed_save(save: Callable[[str], None], path: str) -> dict[str, Any]:
    """:func:`benchmarks.disk.measure_save` for a save that writes a file or a folder."""
    gc.collect()
    peak_reset = reset_peak_rss()
    base = rss_bytes()
    start = time.perf_counter()
    save(path)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_increase": peak_rss_bytes() - base,
        "bytes": stored_bytes(path),
        "peak_reset": peak_reset,
    }


def model_and_optimizer(state: TrainingState) -> dict[str, Any]:
    return {"model": state.model.state_dict(), "optim": state.optimizer.state_dict()}


def failure(exc: BaseException) -> str:
    """The last line of an exception (the child's, for a failure in a measurement child)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


# ------------------------------------------------------------------------------------- part 1
def large_saves(size: int, reps: int, work: Path, threads: int) -> dict[str, Any]:
    """ckpthooks, torch.save + fsync and the O_DIRECT floor at 2 GiB of state (the savers of disk.py)."""
    progress(f"large sync saves: building the state ({size >> 20} MiB)")
    state = build_state(size)
    result: dict[str, Any] = {
        "reps": reps,
        "state": {"bytes": state.nbytes(), "parameters": sum(p.numel() for p in state.model.parameters())},
    }
    # random bytes: no file system or device compresses or skips them
    floor_bytes = os.urandom(state.nbytes())
    saves = savers(state, work / "large-root", floor_bytes=floor_bytes)
    variants = tuple(name for name in LARGE_VARIANTS if name in saves)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    progress(f"large sync saves: {', '.join(variants)}, {reps} repetitions")
    for rep in range(reps):
        for name in rotated(variants, rep):
            path = str(work / "large" / f"{name}-{rep}.bin")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.sync()
            samples[name].append(in_child(lambda save=saves[name], path=path: measure_save(save, path), threads))
    result["save"] = samples
    result["peak_reset"] = all(s["peak_reset"] for runs in samples.values() for s in runs)
    return result


# ------------------------------------------------------------------------------------- part 2
def tc_manager(asynchronous: bool, direct_io: bool) -> Any:
    """A torch-checkpointing ``CheckpointManager`` configured for a CPU-only host: no pinned memory
    and no non-blocking copies (both need an accelerator), the local file system backend."""
    from torch_checkpointing import CheckpointManager
    from torch_checkpointing.config import AsyncCheckpointSaverConfig, SyncCheckpointSaverConfig
    from torch_checkpointing.staging import CheckpointStagerConfig
    from torch_checkpointing.storage.filesystem import LocalFileSystemStorageConfig

    save: Any
    if asynchronous:
        staging = CheckpointStagerConfig(use_pinned_memory=False, use_non_blocking_copy=False)
        save = AsyncCheckpointSaverConfig(staging_config=staging)
    else:
        save = SyncCheckpointSaverConfig()
    storage = LocalFileSystemStorageConfig(use_direct_io=direct_io)
    return CheckpointManager(CheckpointManager.Config(save=save, storage_config=storage))


def probe_tc(work: Path) -> dict[str, Any]:
    """Whether torch-checkpointing saves here, and with which storage setting: its default
    (``use_direct_io=True``) first, then buffered I/O. Runs in a child (its managers start threads)."""
    try:
        import torch_checkpointing
    except ImportError:
        return {"available": False, "reason": "torch-checkpointing not installed"}
    tiny = build_tiny()
    found: dict[str, Any] = {"available": False, "version": getattr(torch_checkpointing, "__version__", None)}
    for direct_io in (True, False):
        folder = str(work / f"probe-tc-{'direct' if direct_io else 'buffered'}")
        manager = tc_manager(False, direct_io)
        try:
            manager.save(folder, model_and_optimizer(tiny))
            manager.load(folder, into=model_and_optimizer(tiny))
        except Exception as exc:
            found[f"direct_io_{direct_io}_error"] = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            manager.close()
        found.update(available=True, direct_io=direct_io)
        return found
    found["reason"] = "; ".join(v for k, v in found.items() if k.endswith("_error"))
    return found


@contextlib.contextmanager
def quiet_dcp() -> Iterator[None]:
    """Without dcp's warning that no process group exists (it saves in a single process then)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def dcp_sync(state: TrainingState, warm: Path) -> Callable[[str], None]:
    import torch.distributed.checkpoint as dcp

    def save(path: str) -> None:
        with quiet_dcp():
            dcp.save(model_and_optimizer(state), checkpoint_id=path, no_dist=True)
        fsync_tree(path)  # dcp fsyncs its data and metadata files itself; the folders it does not

    with quiet_dcp():
        dcp.save(model_and_optimizer(build_tiny()), checkpoint_id=str(warm / "dcp"), no_dist=True)
    return save


def async_pair(
    submit: Callable[[str], Any],
    finish: Callable[[Any, str], None],
    paths: list[str],
    staged: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Two async saves of the state, one after the other: the time the call returned (the
    training thread's blocked time), given ``staged`` the time until it returned too (the copy of
    the state is done: the training loop may change it again), and the time until the save was
    durable."""
    found: dict[str, Any] = {}
    for label, path in zip(("first", "second"), paths):
        gc.collect()
        reset_peak_rss()
        base = rss_bytes()
        start = time.perf_counter()
        handle = submit(path)
        blocked = time.perf_counter() - start
        if staged is not None:
            staged()
        staged_seconds = time.perf_counter() - start
        finish(handle, path)
        total = time.perf_counter() - start
        found[label] = {
            "blocked_seconds": blocked,
            "staged_seconds": staged_seconds,
            "total_seconds": total,
            "peak_increase": peak_rss_bytes() - base,
            "bytes": stored_bytes(path),
        }
    return found


def dcp_async(state: TrainingState, warm: Path, paths: list[str]) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp

    def submit(path: str) -> Any:
        return dcp.async_save(model_and_optimizer(state), checkpoint_id=path, no_dist=True)

    def finish(future: Any, path: str) -> None:
        future.result()
        fsync_tree(path)

    with quiet_dcp():
        dcp.async_save(model_and_optimizer(build_tiny()), checkpoint_id=str(warm / "dcp-async"), no_dist=True).result()
        return async_pair(submit, finish, paths)


def tc_sync(state: TrainingState, warm: Path, direct_io: bool, path: str) -> dict[str, Any]:
    manager = tc_manager(False, direct_io)
    try:
        manager.save(str(warm / "tc"), model_and_optimizer(build_tiny()))

        def save(target: str) -> None:
            manager.save(target, model_and_optimizer(state))
            fsync_tree(target)  # torch-checkpointing does not fsync

        return timed_save(save, path)
    finally:
        manager.close()


def tc_async(state: TrainingState, warm: Path, direct_io: bool, paths: list[str]) -> dict[str, Any]:
    """The manager is built and a tiny save waited for first: its writer process is spawned and
    running before the measured saves. Its staging copy runs on a thread after ``save`` returns;
    a training loop guards ``optimizer.step()`` with ``manager.lock()``, which waits for that copy:
    the staged time is until the lock is free."""
    manager = tc_manager(True, direct_io)
    try:
        future = manager.save(str(warm / "tc-async"), model_and_optimizer(build_tiny()))
        if future is not None:
            future.result()

        def submit(path: str) -> Any:
            return manager.save(path, model_and_optimizer(state))

        def finish(future: Any, path: str) -> None:
            if future is not None:
                future.result()
            fsync_tree(path)

        def staged() -> None:
            with manager.lock():
                pass

        return async_pair(submit, finish, paths, staged)
    finally:
        manager.close()


def peer_saves(size: int, reps: int, work: Path, threads: int, keep: bool) -> dict[str, Any]:
    progress(f"peers: building the state ({size >> 20} MiB)")
    state = build_state(size)
    result: dict[str, Any] = {
        "reps": reps,
        "files_kept_until_the_end": keep,
        "state": {"bytes": state.nbytes(), "parameters": sum(p.numel() for p in state.model.parameters())},
    }
    own = savers(state, work / "peers-root")
    tc = in_child(lambda: probe_tc(work), threads)
    result["tc"] = tc
    variants = tuple(name for name in PEER_VARIANTS if tc["available"] or not name.startswith("tc"))
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    errors: dict[str, str] = {}
    progress(f"peers: {', '.join(variants)}, {reps} repetitions")
    for rep in range(reps):
        for name in rotated(variants, rep):
            if name in errors:
                continue
            folder = work / "peers" / f"{name}-{rep}"
            folder.mkdir(parents=True)
            warm = folder / "warm"
            warm.mkdir()
            path = str(folder / ("ckpt.bin" if name in ("ckpthooks", "torch") else "ckpt"))
            paths = [str(folder / "first"), str(folder / "second")]
            measure: Callable[[], Any]
            if name in ("ckpthooks", "torch"):
                measure = lambda save=own[name], path=path: measure_save(save, path)  # noqa: E731
            elif name == "dcp":
                measure = lambda path=path, warm=warm: timed_save(dcp_sync(state, warm), path)  # noqa: E731
            elif name == "dcp-async":
                measure = lambda warm=warm, paths=paths: dcp_async(state, warm, paths)  # noqa: E731
            elif name == "tc":
                measure = lambda path=path, warm=warm: tc_sync(state, warm, tc["direct_io"], path)  # noqa: E731
            else:
                measure = lambda warm=warm, paths=paths: tc_async(state, warm, tc["direct_io"], paths)  # noqa: E731
            os.sync()
            try:
                samples[name].append(in_child(measure, threads))
            except RuntimeError as exc:  # a peer that fails here is reported, not fatal
                errors[name] = failure(exc)
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
    result["save"] = samples
    result["errors"] = errors
    return result


# ------------------------------------------------------------------------------------- part 3
class SmallTensors(nn.Module):
    """``count`` float32 parameters of mixed sizes totalling about ``total_bytes``."""

    def __init__(self, count: int, total_bytes: int) -> None:
        super().__init__()
        per_cycle = sum(SMALL_PATTERN)
        base = max(1, (total_bytes // 4) * len(SMALL_PATTERN) // (count * per_cycle))
        generator = torch.Generator().manual_seed(0)
        self.tensors = nn.ParameterList(
            nn.Parameter(torch.randn(base * SMALL_PATTERN[i % len(SMALL_PATTERN)], generator=generator))
            for i in range(count)
        )

    def privatize(self) -> None:
        with torch.no_grad():
            for p in self.tensors:
                p.data = p.data.clone()


def small_tensors(count: int, total: int, reps: int, work: Path, threads: int, keep: bool) -> dict[str, Any]:
    from ckpthooks import Checkpointer

    progress(f"small tensors: building {count:,} tensors ({total >> 20} MiB)")
    module = SmallTensors(count, total)
    sizes = [p.numel() for p in module.tensors]
    result: dict[str, Any] = {
        "reps": reps,
        "count": count,
        "tensor_bytes": 4 * sum(sizes),
        "elements": {"min": min(sizes), "max": max(sizes)},
        "files_kept_until_the_end": keep,
    }
    ckpt = Checkpointer(default_root_dir=work / "small-root", preemption_signals=None).track(model=module)
    restorer = Checkpointer(default_root_dir=work / "small-root", preemption_signals=None).track(model=module)

    def torch_save(path: str) -> None:
        torch.save(module.state_dict(), path)
        fsync_file(path)

    saves: dict[str, Callable[[str], None]] = {"ckpthooks": ckpt.save_checkpoint, "torch": torch_save}
    small = SmallTensors(8, 64 << 10)
    warm_ckpt = Checkpointer(default_root_dir=work / "small-warm", preemption_signals=None).track(model=small)
    warm_ckpt.save_checkpoint(work / "small-warm.ckpt")
    torch.save(small.state_dict(), work / "small-warm.pt")

    progress(f"small tensors: saves, {reps} repetitions")
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in saves}
    files: dict[str, str] = {}
    for rep in range(reps):
        for name in rotated(tuple(saves), rep):
            path = str(work / "small" / f"{name}-{rep}.bin")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.sync()
            samples[name].append(in_child(lambda save=saves[name], path=path: measure_save(save, path), threads))
            if rep == 0:
                files[name] = path  # the restores read the first repetition's files
            elif not keep:
                remove_quietly(*outputs_of(path))
    result["save"] = samples

    def restore(name: str) -> dict[str, Any]:
        module.privatize()
        gc.collect()
        start = time.perf_counter()
        if name == "ckpthooks":
            restorer.restore(files[name])
        else:
            module.load_state_dict(torch.load(files[name], weights_only=True))
        return {"seconds": time.perf_counter() - start}

    progress(f"small tensors: restores (file in the page cache), {reps} repetitions")
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in saves}
    for rep in range(reps):
        for name in rotated(tuple(saves), rep):
            make_warm(outputs_of(files[name]) if name == "ckpthooks" else [files[name]])
            found[name].append(in_child(lambda name=name: restore(name), threads))
    result["restore"] = found
    return result


# ------------------------------------------------------------------------------------- the section
def run_part(result: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """One part; a failure is recorded (the report shows it) and the other parts still run."""
    start = time.perf_counter()
    load = os.getloadavg()
    try:
        result[name] = fn()
    except Exception as exc:
        result[name] = {"error": f"{failure(exc)}\n{traceback.format_exc()[-3000:]}"}
    trim_heap()  # the part's state is gone: its memory goes back to the system
    result[name]["load_average_start"] = load
    result[name]["load_average_end"] = os.getloadavg()
    result[name]["seconds"] = time.perf_counter() - start


def main() -> None:
    args = section_args(__doc__ or "")
    reps = args.config["reps"]
    size = args.config["state"]
    large = LARGE[args.size]
    large_reps = min(LARGE_REPS, reps)
    count, small_total = SMALL[args.size]
    work = Path(args.workdir) / "peers"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict[str, Any] = {"reps": reps, "nproc": os.cpu_count(), "load_average_start": os.getloadavg()}
    started = time.perf_counter()

    # Every file is kept until the section ends (see disk.py: on a disk that discards freed
    # blocks, writes into blocks freed a moment ago ran several times faster than elsewhere).
    # Peers and small tensors delete each file after measuring it where the disk has no room for
    # all of them; the large saves need room for all of theirs, or are not run.
    need_peers = reps * (len(PEER_VARIANTS) + 2) * size * 1.1 + reps * 2 * small_total * 1.1
    need_large = len(LARGE_VARIANTS) * large_reps * large * 1.05
    free = shutil.disk_usage(work).free
    keep = free > need_peers + MARGIN
    room = free - (need_peers if keep else 0) - MARGIN
    result["disk"] = {"free": free, "need_large": need_large, "need_peers_and_small": need_peers}

    with single_threaded_parent() as threads:
        result["threads"] = threads
        # warm-ups: imports and first-call costs are paid here, not in a measurement
        for name, save in savers(build_tiny(), work / "warm", floor_bytes=os.urandom(1 << 20)).items():
            if name in LARGE_VARIANTS:
                save(str(work / f"warm-{name}.bin"))
        if room >= need_large:
            run_part(result, "large", lambda: large_saves(large, large_reps, work, threads))
        else:
            result["large"] = {
                "skipped": f"not enough free disk space to keep every file: {free / GiB:.1f} GiB free, "
                f"{need_large / GiB:.1f} GiB needed (+ {MARGIN // GiB} GiB margin"
                + (f", {need_peers / GiB:.1f} GiB for the other parts)" if keep else ")"),
                "bytes": large,
            }
        run_part(result, "peers", lambda: peer_saves(size, reps, work, threads, keep))
        run_part(result, "small", lambda: small_tensors(count, small_total, reps, work, threads, keep))
    result["load_average_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
