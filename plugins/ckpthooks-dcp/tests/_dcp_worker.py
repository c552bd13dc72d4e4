"""One rank of the plugin's distributed tests (started by test_distributed.py, not collected by pytest).

Usage: ``python _dcp_worker.py SCENARIOS RANK WORLD_SIZE PORT WORKDIR``. Joins a gloo process group
on 127.0.0.1:PORT, runs each comma-separated scenario in ``WORKDIR/<scenario>/`` (writing
``result-RANK.json`` there) on a model sharded with FSDP2's ``fully_shard``, and always destroys the
process group. One process pair runs them all: starting Python and torch is most of the cost.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ckpthooks import Checkpointer, ModelCheckpoint
from torch.distributed.fsdp import fully_shard

from ckpthooks_dcp import DCPCheckpointIO, checksums

UNDO: list[Any] = []


def build(seed: int, shard: bool = True) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The test model: three linear layers, each sharded over the ranks along its first dimension."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    )
    if shard:
        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        fully_shard(model)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)  # the same data on every rank
    for _ in range(steps):
        model(torch.randn(8, 4, generator=generator)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Model and optimizer state with every DTensor gathered whole (the same on every rank)."""

    def whole(value: Any) -> Any:  # a copy: training on must not change it (on a mesh of one rank
        # full_tensor() returns the local tensor itself)
        return (value.full_tensor() if hasattr(value, "full_tensor") else value).clone()

    state = {f"model.{k}": whole(v) for k, v in model.state_dict().items()}
    for index, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            state[f"optim.{index}.{name}"] = whole(value)
    return state


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def checkpointer(root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Checkpointer:
    return Checkpointer(root, checkpoint_io=DCPCheckpointIO(), **kwargs).track(model=model, optimizers=optimizer)


def scenario_train(rank: int, workdir: Path) -> dict[str, Any]:
    """Train 3 epochs on 2 ranks; top-1 by loss and last: prunes and overwrites folders."""
    model, optimizer = build(0)
    policy = ModelCheckpoint(monitor="loss", save_top_k=1, save_last=True)
    ckpt = checkpointer(workdir / "run", model, optimizer, callbacks=[policy])
    read_back: list[str] = []  # files a save hashed by reading them (not while DCP wrote them)
    hash_file = checksums.hash_local_file

    def counting(path: str, *args: Any, **kwargs: Any) -> Any:
        read_back.append(os.path.basename(path))
        return hash_file(path, *args, **kwargs)

    checksums.hash_local_file = counting  # type: ignore[assignment]
    UNDO.append(lambda: setattr(checksums, "hash_local_file", hash_file))

    @ckpt.loop(max_epochs=3)
    def epoch(index: int) -> None:
        for batch in ckpt.batches(range(2)):
            train_steps(model, optimizer, 1, seed=index * 10 + batch)
        ckpt.log("loss", 10.0 - index + rank)  # rank 0's value decides

    epoch()
    reference = full_state(model, optimizer)
    if rank == 0:
        torch.save(reference, workdir / "reference.pt")
    dist.barrier()
    folder = workdir / "run" / "checkpoints"
    return {
        "files": sorted(os.listdir(folder)),
        "shards": {name: sorted(os.listdir(folder / name)) for name in os.listdir(folder) if (folder / name).is_dir()},
        "best_model_path": policy.best_model_path,
        "last_model_path": policy.last_model_path,
        "placements": str(model.state_dict()["0.weight"].placements),
        "local_rows": int(model.state_dict()["0.weight"].to_local().shape[0]),
        "read_back": read_back,
    }


def scenario_resume(rank: int, workdir: Path) -> dict[str, Any]:
    """A fresh sharded model and an optimizer that never stepped resume "last" of scenario train."""
    model, optimizer = build(seed=100 + rank)
    policy = ModelCheckpoint(monitor="loss", save_top_k=1, save_last=True)
    ckpt = checkpointer(workdir.parent / "train" / "run", model, optimizer, callbacks=[policy])
    report = ckpt.restore("last", must_exist=True)
    reference = torch.load(workdir.parent / "train" / "reference.pt")
    restored = full_state(model, optimizer)
    kinds = sorted({type(v).__name__ for s in optimizer.state_dict()["state"].values() for v in s.values()})
    train_steps(model, optimizer, 1, seed=7)  # the restored state trains on
    return {
        "path": report.path if report else None,
        "global_step": report.global_step if report else None,
        "equal": same(restored, reference),
        "optimizer_state_kinds": kinds,
    }


def scenario_from_one(rank: int, workdir: Path) -> dict[str, Any]:
    """A checkpoint saved by one process (no process group, plain tensors) loads into 2 shards."""
    source = workdir.parent.parent / "one"
    model, optimizer = build(seed=200 + rank)
    ckpt = checkpointer(source, model, optimizer, enable_checkpointing=False)
    report = ckpt.restore(source / "single.ckpt")
    reference = torch.load(source / "reference.pt")
    return {
        "equal": same(full_state(model, optimizer), reference),
        "global_step": report.global_step if report else None,
        "local_rows": int(model.state_dict()["0.weight"].to_local().shape[0]),
    }


def scenario_fail(rank: int, workdir: Path) -> dict[str, Any]:
    """Rank 1's write fails while last.ckpt is overwritten: every rank raises, the old folder stays."""
    from torch.distributed.checkpoint import FileSystemWriter

    model, optimizer = build(0)
    ckpt = checkpointer(workdir / "run", model, optimizer, enable_checkpointing=False)
    train_steps(model, optimizer, 1, seed=1)
    ckpt.save_checkpoint(workdir / "run" / "last.ckpt")
    first = full_state(model, optimizer)
    train_steps(model, optimizer, 1, seed=2)
    if rank == 1:
        real = FileSystemWriter.write_data

        def broken(self: Any, plan: Any, planner: Any) -> Any:
            raise OSError(errno.EIO, "Input/output error (injected on rank 1)")

        FileSystemWriter.write_data = broken  # type: ignore[method-assign]
        UNDO.append(lambda: setattr(FileSystemWriter, "write_data", real))
    started = time.monotonic()
    outcome: dict[str, Any] = {"raised": None}
    try:
        ckpt.save_checkpoint(workdir / "run" / "last.ckpt")
    except Exception as exc:
        outcome = {"raised": type(exc).__name__, "message": str(exc)}
    outcome["seconds"] = time.monotonic() - started
    while UNDO:
        UNDO.pop()()
    dist.barrier()
    outcome["files"] = sorted(os.listdir(workdir / "run"))
    fresh_model, fresh_optimizer = build(seed=300 + rank)
    report = checkpointer(workdir / "run", fresh_model, fresh_optimizer, enable_checkpointing=False).restore("last")
    outcome["restored"] = report.path if report else None
    outcome["old_state_back"] = same(full_state(fresh_model, fresh_optimizer), first)
    return outcome


def scenario_one_rank(rank: int, workdir: Path) -> dict[str, Any]:
    """FSDP2 on a process group of one rank loads what scenario train saved on two (run with a
    world size of 1, ``DCP_TRAIN_FOLDER`` naming that scenario's folder)."""
    source = Path(os.environ["DCP_TRAIN_FOLDER"])
    model, optimizer = build(seed=300)
    policy = ModelCheckpoint(monitor="loss", save_top_k=1, save_last=True)
    ckpt = checkpointer(source / "run", model, optimizer, callbacks=[policy])
    report = ckpt.restore("last", must_exist=True)
    restored = full_state(model, optimizer)
    reference = torch.load(source / "reference.pt")
    train_steps(model, optimizer, 1, seed=7)  # the restored state trains on
    return {
        "world_size": dist.get_world_size(),
        "global_step": report.global_step if report else None,
        "equal": same(restored, reference),
        "differ": sorted(set(restored) ^ set(reference))
        + [k for k in restored if k in reference and not torch.equal(restored[k], reference[k])],
        "placements": str(model.state_dict()["0.weight"].placements),
    }


def s3_setup() -> tuple[str, dict[str, Any]]:
    """The S3 root and storage options the test passes (``DCP_S3_ROOT``, ``DCP_S3_OPTIONS``)."""
    return os.environ["DCP_S3_ROOT"], json.loads(os.environ["DCP_S3_OPTIONS"])


def scenario_s3_train(rank: int, workdir: Path) -> dict[str, Any]:
    """Train 2 epochs on 2 ranks, saving straight to S3 (top-1 by loss and last)."""
    root, options = s3_setup()
    model, optimizer = build(0)
    policy = ModelCheckpoint(monitor="loss", save_top_k=1, save_last=True)
    ckpt = Checkpointer(root, checkpoint_io=DCPCheckpointIO(), storage_options=options, callbacks=[policy])
    ckpt.track(model=model, optimizers=optimizer)

    @ckpt.loop(max_epochs=2)
    def epoch(index: int) -> None:
        for batch in ckpt.batches(range(2)):
            train_steps(model, optimizer, 1, seed=index * 10 + batch)
        ckpt.log("loss", 10.0 - index)

    epoch()
    reference = full_state(model, optimizer)
    if rank == 0:
        torch.save(reference, workdir / "reference.pt")
    return {"best_model_path": policy.best_model_path, "last_model_path": policy.last_model_path}


def scenario_s3_from_one(rank: int, workdir: Path) -> dict[str, Any]:
    """A checkpoint one process saved to S3 (``DCP_S3_SINGLE``) loads into 2 FSDP2 ranks."""
    _root, options = s3_setup()
    source = os.environ["DCP_S3_SINGLE"]
    model, optimizer = build(seed=200 + rank)
    ckpt = Checkpointer(workdir, checkpoint_io=DCPCheckpointIO(), storage_options=options, enable_checkpointing=False)
    report = ckpt.track(model=model, optimizers=optimizer).restore(source)
    return {
        "equal": same(full_state(model, optimizer), torch.load(os.environ["DCP_S3_REFERENCE"])),
        "global_step": report.global_step if report else None,
        "local_rows": int(model.state_dict()["0.weight"].to_local().shape[0]),
    }


def scenario_s3_kill(rank: int, workdir: Path) -> dict[str, Any]:
    """A save to S3 commits; during the next one rank 1 is SIGKILLed while it writes its shards.
    Rank 0 then fails (the process group lost a rank); what stays "last" is checked by the test."""
    import signal

    from torch.distributed.distributed_c10d import _set_pg_timeout

    root, options = s3_setup()
    _set_pg_timeout(timedelta(seconds=5))
    model, optimizer = build(0)
    ckpt = Checkpointer(root, checkpoint_io=DCPCheckpointIO(), storage_options=options, enable_checkpointing=False)
    ckpt.track(model=model, optimizers=optimizer)
    train_steps(model, optimizer, 2, seed=1)
    ckpt.progress.global_step = 2
    ckpt.save_checkpoint(f"{root}/first.ckpt")
    first = full_state(model, optimizer)  # a collective (the shards are gathered): every rank
    if rank == 0:
        torch.save(first, workdir / "first.pt")
    train_steps(model, optimizer, 2, seed=2)
    ckpt.progress.global_step = 4
    if rank == 1:
        from ckpthooks_dcp import checksums

        real_write = checksums._HashingStream.write

        def write_then_die(self: Any, data: Any) -> int:
            real_write(self, data)
            os.kill(os.getpid(), signal.SIGKILL)
            return 0

        checksums._HashingStream.write = write_then_die  # type: ignore[method-assign]
    started = time.monotonic()
    try:
        ckpt.save_checkpoint(f"{root}/second.ckpt")
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc)[:2000], "seconds": time.monotonic() - started}
    return {"raised": None}


SCENARIOS = {
    "s3_train": scenario_s3_train,
    "s3_from_one": scenario_s3_from_one,
    "s3_kill": scenario_s3_kill,
    "train": scenario_train,
    "resume": scenario_resume,
    "from_one": scenario_from_one,
    "fail": scenario_fail,
    "one_rank": scenario_one_rank,
}


#: scenarios that leave the process group unusable (a rank killed): they run last
TERMINAL = {"s3_kill"}


def run_scenario(name: str, rank: int, workdir: Path) -> dict[str, Any]:
    folder = workdir / name
    folder.mkdir(exist_ok=True)
    try:
        result = SCENARIOS[name](rank, folder)
    except BaseException:
        result = {"error": traceback.format_exc()}
    finally:
        while UNDO:
            UNDO.pop()()
    (folder / f"result-{rank}.json").write_text(json.dumps(result))
    return result


def main() -> int:
    scenarios, rank_text, world_text, port, workdir_text = sys.argv[1:6]
    rank, world_size, workdir = int(rank_text), int(world_text), Path(workdir_text)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank_text, WORLD_SIZE=world_text)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=30))
    try:
        for name in scenarios.split(","):
            if "error" in run_scenario(name, rank, workdir) or name in TERMINAL:
                break  # the other rank may be stuck in a collective, or gone: end
            dist.barrier()
    finally:
        if scenarios.split(",")[-1] not in TERMINAL:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # the results are written: skip the interpreter's slow teardown of torch
