"""Local disk: durable sync saves, async saves, the memcpy floor, checksum speed and restores.

The state is built once in this process (single-threaded, so that it can fork); every measurement
then runs in a forked child: a fresh process holding the same state, whose peak RSS starts at its
current RSS (``/proc/self/clear_refs``). Variants are interleaved and their order rotates with
each repetition, so that a slow phase of the machine hits every variant alike.

    python -m benchmarks.disk --size quick --workdir /tmp/x --out /tmp/x/disk.json
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    ROOT,
    fsync_file,
    in_child,
    make_cold,
    make_warm,
    peak_rss_bytes,
    progress,
    remove_quietly,
    reset_peak_rss,
    rss_bytes,
    section_args,
    single_threaded_parent,
    write_json,
)
from benchmarks.state import TrainingState, build_state, build_tiny

SAVE_VARIANTS = ("torch", "ckpthooks", "lightning", "safetensors", "floor-direct", "floor-buffered")
#: size of the aligned buffer the raw floors write from
FLOOR_CHUNK = 16 * 1024 * 1024
RESTORE_VARIANTS = ("torch", "ckpthooks", "ckpthooks-verify-size")


def async_available() -> bool:
    from ckpthooks import Checkpointer

    return "async_save" in inspect.signature(Checkpointer).parameters and callable(getattr(Checkpointer, "wait", None))


def checkpointer(root: Path, state: TrainingState, **options: Any) -> Any:
    from ckpthooks import Checkpointer

    ckpt = Checkpointer(default_root_dir=root, preemption_signals=None, **options)
    return ckpt.track(model=state.model, optimizers=state.optimizer)


# ------------------------------------------------------------------------------------- savers
def raw_writer(data: bytes, direct: bool) -> Callable[[str], None] | None:
    """The floor of a durable write of ``data`` (random bytes, the checkpoint's size) to a new file:
    16 MiB chunks from one aligned buffer, with ``O_DIRECT`` + ``fdatasync`` (``direct``), or
    buffered writes + ``fsync``; the folder fsynced after. ``None`` where O_DIRECT is missing."""
    import mmap

    o_direct = getattr(os, "O_DIRECT", 0)
    if direct and not o_direct:
        return None
    buffer = mmap.mmap(-1, FLOOR_CHUNK)
    view = memoryview(buffer)
    padded = -(-len(data) // 4096) * 4096

    def write(path: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (o_direct if direct else 0)
        fd = os.open(path, flags, 0o644)
        try:
            offset = 0
            while offset < len(data):
                take = min(FLOOR_CHUNK, len(data) - offset)
                view[:take] = data[offset : offset + take]
                length = min(FLOOR_CHUNK, padded - offset) if direct else take  # O_DIRECT: whole blocks
                os.pwrite(fd, view[:length], offset)
                offset += take
            if direct:
                os.ftruncate(fd, len(data))
                os.fdatasync(fd)
            else:
                os.fsync(fd)
        finally:
            os.close(fd)
        fsync_file(path)  # the folder (and a no-op flush of the file)

    return write


def savers(state: TrainingState, root: Path, floor_bytes: bytes | None = None) -> dict[str, Callable[[str], None]]:
    """Each variant's durable save of ``state`` to a path (the state_dict calls included), and,
    given ``floor_bytes``, the raw floors. Variants whose library is not installed are left out
    (the report says so)."""
    ckpt = checkpointer(root, state)

    def torch_save(path: str) -> None:
        torch.save(state.lightning_dict(), path)
        fsync_file(path)

    def ckpthooks_save(path: str) -> None:
        ckpt.save_checkpoint(path)  # temp file, fsync, rename, folder fsync, checksum, manifest

    found: dict[str, Callable[[str], None]] = {"torch": torch_save, "ckpthooks": ckpthooks_save}
    try:
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO as LightningIO
    except ImportError:
        pass
    else:
        lightning_io = LightningIO()

        def lightning_save(path: str) -> None:
            lightning_io.save_checkpoint(state.lightning_dict(), path)
            fsync_file(path)  # Lightning does not fsync

        found["lightning"] = lightning_save
    try:
        from safetensors.torch import save_file
    except ImportError:
        pass
    else:

        def safetensors_save(path: str) -> None:
            save_file(state.flat_tensors(), path)
            fsync_file(path)

        found["safetensors"] = safetensors_save
    if floor_bytes is not None:
        for name, flag in (("floor-direct", True), ("floor-buffered", False)):
            writer = raw_writer(floor_bytes, flag)
            if writer is not None:
                found[name] = writer
    return found


def measure_save(save: Callable[[str], None], path: str) -> dict[str, Any]:
    gc.collect()
    peak_reset = reset_peak_rss()
    base = rss_bytes()
    start = time.perf_counter()
    save(path)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_increase": peak_rss_bytes() - base,
        "bytes": os.path.getsize(path),
        "peak_reset": peak_reset,
    }


def outputs_of(path: str) -> list[str]:
    return [path, path + ".manifest.json"]


# ------------------------------------------------------------------------------------- memcpy, checksum
def run_fresh(task: str, state_bytes: int, work: Path, rep: int, keep: bool) -> dict[str, Any]:
    """One measurement of :mod:`benchmarks.fresh` in an exec'd process (its files are kept until
    the section ends when ``keep``)."""
    out = work / f"fresh-{task}.json"
    remove_quietly(out)
    folder = work / f"fresh-{task}-{rep}"
    cmd = [sys.executable, "-m", "benchmarks.fresh", task, "--state-bytes", str(state_bytes)]
    cmd += ["--workdir", str(folder), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.fresh {task} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def measure_checksums(state: TrainingState) -> dict[str, Any]:
    """Throughput of every checksum algorithm ckpthooks has here, over the state's bytes."""
    from ckpthooks._io.hashing import available_algorithms, default_algorithm, new_hasher

    views = [memoryview(t.detach().reshape(-1).view(torch.uint8).numpy()) for t in state.tensors() if t.numel()]
    total = sum(v.nbytes for v in views)
    result: dict[str, Any] = {"default": default_algorithm(), "bytes": total, "seconds": {}}
    for algorithm in sorted(set(available_algorithms()) | {"crc32"}):
        _, hasher = new_hasher(algorithm)
        start = time.perf_counter()
        for view in views:
            hasher.update(view)
        hasher.hexdigest()
        result["seconds"][algorithm] = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------- restore
def measure_restore(state: TrainingState, restore: Callable[[], None]) -> dict[str, Any]:
    """Time one restore, then the first and second optimizer steps after it (a memory-mapped
    restore defers page faults and copy-on-write copies to the first step)."""
    state.privatize()
    gc.collect()
    start = time.perf_counter()
    restore()
    seconds = time.perf_counter() - start
    state.fresh_gradients()
    steps = []
    for _ in range(2):
        start = time.perf_counter()
        state.optimizer.step()
        steps.append(time.perf_counter() - start)
    return {"seconds": seconds, "first_step_seconds": steps[0], "second_step_seconds": steps[1]}


def restorers(state: TrainingState, root: Path, path: str) -> dict[str, Callable[[], None]]:
    full = checkpointer(root, state, verify="full")
    size_only = checkpointer(root, state, verify="size")

    def torch_restore() -> None:
        checkpoint = torch.load(path, weights_only=True)
        state.model.load_state_dict(checkpoint["state_dict"])
        state.optimizer.load_state_dict(checkpoint["optimizer_states"][0])

    return {
        "torch": torch_restore,
        "ckpthooks": lambda: full.restore(path),
        "ckpthooks-verify-size": lambda: size_only.restore(path),
    }


def read_file(path: str) -> dict[str, Any]:
    """The floor of reading the file: sequential buffered reads into one 16 MiB buffer."""
    buffer = bytearray(FLOOR_CHUNK)
    view = memoryview(buffer)
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while True:
            n = handle.readinto(view)
            if not n:
                break
            total += n
    return {"seconds": time.perf_counter() - start, "bytes": total}


# ------------------------------------------------------------------------------------- the section
def rotated(items: tuple[str, ...], rep: int) -> list[str]:
    shift = rep % len(items)
    return list(items[shift:] + items[:shift])


def main() -> None:
    args = section_args(__doc__ or "")
    reps = args.config["reps"]
    work = Path(args.workdir) / "disk"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict[str, Any] = {"reps": reps}

    with single_threaded_parent() as threads:
        result["threads"] = threads
        progress(f"building the state ({args.config['state'] >> 20} MiB)")
        state = build_state(args.config["state"])
        tiny = build_tiny()
        result["state"] = {
            "bytes": state.nbytes(),
            "shape": vars(state.shape),
            "parameters": sum(p.numel() for p in state.model.parameters()),
        }

        # warm-ups: imports, plugin loading and first-call costs are paid here, not in a measurement
        warm_savers = savers(tiny, work / "warm", floor_bytes=os.urandom(1 << 20))
        for name, save in warm_savers.items():
            save(str(work / f"warm-{name}.bin"))
        # the floors write random bytes of the checkpoint's size (random: no file system or device
        # compresses or skips them; zeros would run faster than any real checkpoint)
        floor_bytes = os.urandom(state.nbytes())
        saves = savers(state, work / "root", floor_bytes=floor_bytes)
        variants = tuple(name for name in SAVE_VARIANTS if name in saves)

        # Every save writes a new file, and no file is deleted before the section ends: on a disk
        # that discards freed blocks (ext4 -o discard on a VM disk here), writing into blocks freed
        # a moment ago ran at 1-1.8 GB/s and into other blocks at ~0.4 GB/s, so deleting between
        # measurements made each variant's time depend on the luck of block reuse.
        size = args.config["state"]
        needed = (len(variants) + 2) * reps * size * 1.1 + 2 * size
        keep = shutil.disk_usage(work).free > needed + 2 * 2**30
        result["files_kept_until_the_end"] = keep
        progress("sync saves" + ("" if keep else " (not enough free space to keep every file: deleting each)"))
        samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for rep in range(reps):
            for name in rotated(variants, rep):
                path = str(work / "saves" / f"{name}-{rep}.bin")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.sync()
                sample = in_child(lambda save=saves[name], path=path: measure_save(save, path), threads)
                samples[name].append(sample)
                if not keep:
                    remove_quietly(*outputs_of(path))
        result["save"] = samples
        result["peak_reset"] = all(s["peak_reset"] for runs in samples.values() for s in runs)

        progress("checksum throughput")
        result["checksum"] = in_child(lambda: measure_checksums(state), threads)

        result["async"] = {"available": async_available()}
        label = "memcpy floor and async saves" if result["async"]["available"] else "memcpy floor"
        progress(f"{label} (a new process each)")
        result["memcpy"] = []
        runs = []
        for rep in range(reps):
            result["memcpy"].append(run_fresh("memcpy", size, work, rep, keep))
            if result["async"]["available"]:
                os.sync()
                runs.append(run_fresh("async", size, work, rep, keep))
        if result["async"]["available"]:
            result["async"]["samples"] = runs

        progress("restores")
        restore_path = str(work / "restore.ckpt")
        checkpointer(work / "prepare", state).save_checkpoint(restore_path)
        result["restore_file_bytes"] = os.path.getsize(restore_path)
        restores = restorers(state, work / "restore-root", restore_path)
        methods = set()
        result["restore"] = {}
        for cache in ("cold", "warm"):
            found: dict[str, list[dict[str, Any]]] = {name: [] for name in RESTORE_VARIANTS}
            for rep in range(reps):
                for name in rotated(RESTORE_VARIANTS, rep):
                    if cache == "cold":
                        methods.add(make_cold(outputs_of(restore_path)))
                    else:
                        make_warm(outputs_of(restore_path))
                    found[name].append(in_child(lambda fn=restores[name]: measure_restore(state, fn), threads))
            result["restore"][cache] = found
        result["cache_method"] = sorted(methods)

        progress("cold read floor")
        result["read_floor"] = []
        for _ in range(reps):
            make_cold(outputs_of(restore_path))
            result["read_floor"].append(in_child(lambda: read_file(restore_path), threads))
    shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
