"""Scale: finding "last" and "best" among many committed checkpoints, and top-k updates with a
long history.

The checkpoints are tiny (one real checkpoint's bytes, copied) with real manifests, written by a
``ModelCheckpoint(monitor="val_loss", save_top_k=-1)`` writer with random scores, so that "best"
has to rank them all, and the folder's commit index as the writer leaves it (see
``ckpthooks/_commit_index.py``). Each lookup uses ``Checkpointer.find_checkpoint`` (what
``restore("last"/"best")`` calls), with a warm page cache, then with a cold one; then again without
the commit index (a folder written by an older ckpthooks: every manifest is read).

    python -m benchmarks.scale --size quick --workdir /tmp/x --out /tmp/x/scale.json
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import make_cold, median, progress, section_args, write_json


def populate(folder: Path, count: int) -> tuple[Any, Any]:
    """``count`` committed checkpoints in ``folder/checkpoints``; returns a Checkpointer on them
    and its ModelCheckpoint."""
    from ckpthooks import Checkpointer, ModelCheckpoint
    from ckpthooks import _commit_index as commit_index
    from ckpthooks._catalog import read_manifest, scan_for_index
    from ckpthooks._manifest import manifest_path

    def make() -> tuple[Any, Any]:
        policy = ModelCheckpoint(dirpath=folder / "checkpoints", monitor="val_loss", save_top_k=-1)
        ckpt = Checkpointer(default_root_dir=folder, callbacks=[policy], preemption_signals=None)
        ckpt.track(model=torch.nn.Linear(2, 2))
        return ckpt, policy

    ckpt, policy = make()
    template = str(folder / "checkpoints" / "template.ckpt")
    ckpt.log("val_loss", 1.0)
    ckpt.save_checkpoint(template, writer=f"{policy.state_key}#topk")
    data = Path(template).read_bytes()
    manifest = read_manifest(template)
    assert manifest is not None
    os.remove(template)
    os.remove(manifest_path(template))
    rng = random.Random(0)
    created = time.time() - count
    for step in range(count):
        name = f"epoch=0-step={step}.ckpt"
        path = folder / "checkpoints" / name
        path.write_bytes(data)
        entry = dataclasses.replace(
            manifest,
            file=name,
            global_step=step,
            metrics={"val_loss": rng.random(), "epoch": 0.0, "step": float(step)},
            created=created + step,
        )
        Path(manifest_path(str(path))).write_text(entry.to_json())
    # what the commits would have left: every manifest in the folder's commit index
    commit_index.rewrite(str(folder / "checkpoints"), scan_for_index(str(folder / "checkpoints")).entries)
    os.sync()
    return make()  # a new checkpointer: nothing cached from the writes


def time_find(ckpt: Any, which: str, cold: list[str] | None) -> tuple[float, str]:
    """Time ``find_checkpoint(which)``; with ``cold`` (the files involved), evict them first."""
    if cold is not None:
        make_cold(cold)
    start = time.perf_counter()
    found = ckpt.find_checkpoint(which)
    return time.perf_counter() - start, str(found)


def find_all(ckpt: Any, reps: int, files: list[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
    """``reps`` timings of "last" and "best", warm then cold; and the file names found."""
    found: dict[str, list[float]] = {}
    answers = {}
    for cache in ("warm", "cold"):
        for which in ("last", "best"):
            key = f"{which}_{cache}"
            found[key] = []
            if cache == "warm":
                time_find(ckpt, which, cold=None)  # fill the cache
            for _ in range(reps):
                seconds, answer = time_find(ckpt, which, cold=files if cache == "cold" else None)
                found[key].append(seconds)
                answers[which] = os.path.basename(answer)
    return found, answers


# ------------------------------------------------------------------------------------- top-k
def policy_without_writes(folder: Path, save_top_k: int) -> tuple[Any, Any]:
    from ckpthooks import Checkpointer, ModelCheckpoint

    class NoWriteCheckpoint(ModelCheckpoint):
        """Writes are left out: what is left of an update is the policy's own bookkeeping
        (ranking, naming, the name's existence check, the transaction around the write)."""

        def _write(self, checkpointer: Any, filepath: str, *, role: str, score: Any, replaces: Any) -> None:
            if replaces is not None and replaces != filepath:
                self._pending_removals.discard(replaces)

    policy = NoWriteCheckpoint(
        dirpath=folder, monitor="val_loss", save_top_k=save_top_k, filename="{epoch}-{step}-{val_loss:.6f}"
    )
    ckpt = Checkpointer(default_root_dir=folder, callbacks=[policy], preemption_signals=None)
    return ckpt, policy


def topk_updates(folder: Path, save_top_k: int, history: int, measured: int) -> dict[str, Any]:
    """Per-update time of ``ModelCheckpoint.save_due`` (writes left out) and of the bare ``TopK``
    operations after ``history`` earlier updates; every measured score is a new best, so every
    update ranks, names, and (with a finite k) displaces the worst file."""
    from ckpthooks._policies.topk import TopK

    shutil.rmtree(folder, ignore_errors=True)
    ckpt, policy = policy_without_writes(folder, save_top_k)
    score = 1e6

    def update() -> None:
        nonlocal score
        score -= 1.0
        ckpt.progress.global_step += 1
        ckpt.log("val_loss", score)
        policy.save_due(ckpt)

    for _ in range(history):
        update()
    start = time.perf_counter()
    for _ in range(measured):
        update()
    policy_seconds = (time.perf_counter() - start) / measured

    start = time.perf_counter()
    state = policy.state_dict()
    state_dict_seconds = time.perf_counter() - start

    topk = TopK(k=save_top_k, mode="min")
    value = 1e6

    def bare() -> None:
        nonlocal value
        value -= 1.0
        if topk.qualifies(value):
            displaced = topk.displaced()
            if displaced is not None:
                topk.discard(displaced)
            topk.add(f"/ckpt/{value}.ckpt", value)

    for _ in range(history):
        bare()
    start = time.perf_counter()
    for _ in range(measured):
        bare()
    bare_seconds = (time.perf_counter() - start) / measured
    ckpt.close()
    return {
        "policy_update_seconds": policy_seconds,
        "topk_update_seconds": bare_seconds,
        "state_dict_seconds": state_dict_seconds,
        "entries_kept": len(state["best_k_models"]),
    }


def main() -> None:
    args = section_args(__doc__ or "")
    reps, count = args.config["reps"], args.config["checkpoints"]
    work = Path(args.workdir) / "scale"
    shutil.rmtree(work, ignore_errors=True)
    progress(f"writing {count} committed checkpoints")
    start = time.perf_counter()
    ckpt, _ = populate(work / "many", count)
    result: dict[str, Any] = {"reps": reps, "checkpoints": count, "populate_seconds": time.perf_counter() - start}

    from ckpthooks._commit_index import INDEX_NAME

    progress('finding "last" and "best"')
    files = [str(p) for p in (work / "many").rglob("*") if p.is_file()]
    result["find_seconds"], result["answers"] = find_all(ckpt, reps, files)
    progress('finding "last" and "best" without the commit index')
    os.remove(work / "many" / "checkpoints" / INDEX_NAME)
    files = [str(p) for p in (work / "many").rglob("*") if p.is_file()]
    result["find_seconds_without_index"], answers = find_all(ckpt, reps, files)
    if answers != result["answers"]:
        raise RuntimeError(f"the commit index changed the answers: {result['answers']} with it, {answers} without")
    start = time.perf_counter()
    from ckpthooks import Checkpointer, ModelCheckpoint

    Checkpointer(
        default_root_dir=work / "many",
        callbacks=[ModelCheckpoint(dirpath=work / "many" / "checkpoints", monitor="val_loss")],
        preemption_signals=None,
    )
    result["construct_seconds"] = time.perf_counter() - start
    shutil.rmtree(work / "many", ignore_errors=True)

    progress("top-k updates with a short and a long history")
    measured = 200
    topk: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for save_top_k in (10, -1):
        topk[str(save_top_k)] = {}
        for history in (10, count):
            runs = [topk_updates(work / "topk", save_top_k, history, measured) for _ in range(reps)]
            topk[str(save_top_k)][str(history)] = runs
    result["topk"] = topk
    result["topk_measured_updates"] = measured
    result["medians"] = {k: median(v) for k, v in result["find_seconds"].items()}
    result["medians_without_index"] = {k: median(v) for k, v in result["find_seconds_without_index"].items()}
    shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
