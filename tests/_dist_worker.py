"""One rank of a distributed test (started by tests/test_distributed.py, not collected by pytest).

Usage: ``python tests/_dist_worker.py SCENARIOS RANK WORLD_SIZE PORT WORKDIR``. Joins a gloo process
group on 127.0.0.1:PORT, runs each of the comma-separated SCENARIOS in ``WORKDIR/<scenario>/``
(writing ``result-RANK.json`` there), and always destroys the process group. One process pair runs
them all: starting Python and importing torch is most of the cost of a distributed test.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist

from ckpthooks import Callback, Checkpointer, ModelCheckpoint, rank_zero_only
from ckpthooks._io.durable import TEMP_MARKER
from ckpthooks._io.torch_io import TorchCheckpointIO
from ckpthooks.exceptions import CheckpointNotFoundError
from tests.helpers import TinyNet, make_data

EPOCHS = 2
BATCHES = 4


#: how to undo the monkeypatches of the running scenario
UNDO: list[Any] = []


def spy_on_saves(rank: int, workdir: Path) -> None:
    """Every TorchCheckpointIO.save_checkpoint call in this process appends to saves-rank<R>.log."""
    log = workdir / f"saves-rank{rank}.log"
    log.write_text("")
    real = TorchCheckpointIO.save_checkpoint

    def save_checkpoint(self: TorchCheckpointIO, checkpoint: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        with open(log, "a") as handle:
            handle.write(f"{rank} {path}\n")
        return real(self, checkpoint, path, *args, **kwargs)

    TorchCheckpointIO.save_checkpoint = save_checkpoint  # type: ignore[method-assign]
    UNDO.append(lambda: setattr(TorchCheckpointIO, "save_checkpoint", real))


class Straggler(Callback):
    """Makes one rank reach the end-of-epoch events late (after the writer finished its save)."""

    def __init__(self, slow_rank: int, seconds: float) -> None:
        self.slow_rank = slow_rank
        self.seconds = seconds

    def on_train_epoch_end(self, checkpointer: Any) -> None:
        if checkpointer.global_rank == self.slow_rank:
            time.sleep(self.seconds)


class Momentum:
    """SGD with momentum by hand: constructing a torch.optim optimizer imports torch._dynamo,
    which costs seconds per process; this keeps each rank's start-up short."""

    def __init__(self, model: torch.nn.Module, lr: float = 0.05, beta: float = 0.9) -> None:
        self.params = dict(model.named_parameters())
        self.lr, self.beta = lr, beta
        self.velocity = {name: torch.zeros_like(p) for name, p in self.params.items()}

    @torch.no_grad()
    def step(self) -> None:
        for name, param in self.params.items():
            assert param.grad is not None
            self.velocity[name].mul_(self.beta).add_(param.grad)
            param.sub_(self.lr * self.velocity[name])
            param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": {k: v.clone() for k, v in self.velocity.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state["velocity"].items():
            self.velocity[name].copy_(value)


def make_setup(root: Path, seed: int, callbacks: list[Any]) -> tuple[Checkpointer, torch.nn.Module, Momentum]:
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = Momentum(model)
    ckpt = Checkpointer(root, callbacks=callbacks).track(model=model, optimizers=optimizer)
    return ckpt, model, optimizer


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.state_dict().values()])


def gather_objects(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def train(ckpt: Checkpointer, model: torch.nn.Module, optimizer: Momentum, max_epochs: int) -> Any:
    data = make_data(batches=BATCHES)

    @ckpt.loop(max_epochs=max_epochs)
    def epoch_fn(epoch: int) -> None:
        for x, y in ckpt.batches(data):
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()

    return epoch_fn()


def policy_view(policy: ModelCheckpoint) -> dict[str, Any]:
    return {
        "best_model_path": policy.best_model_path,
        "last_model_path": policy.last_model_path,
        "best_k_models": sorted(policy.best_k_models),
    }


def scenario_fit(rank: int, workdir: Path, straggle: float = 0.0) -> dict[str, Any]:
    spy_on_saves(rank, workdir)
    root = workdir / "run"
    policy = ModelCheckpoint(save_top_k=-1, save_last=True)
    callbacks: list[Any] = [Straggler(1, straggle), policy] if straggle else [policy]
    ckpt, model, optimizer = make_setup(root, seed=0, callbacks=callbacks)
    result = train(ckpt, model, optimizer, EPOCHS)
    last = ckpt.find_checkpoint("last")
    trained = flat(model)
    trained_velocity = torch.cat([v.reshape(-1) for v in optimizer.velocity.values()])

    # a fresh start on every rank, from other random weights, restoring "last"
    fresh_policy = ModelCheckpoint(save_top_k=-1, save_last=True)
    ckpt2, model2, optimizer2 = make_setup(root, seed=100 + rank, callbacks=[fresh_policy])
    before = flat(model2)
    report = ckpt2.restore("last")
    restored = flat(model2)
    gathered = [torch.zeros_like(restored) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, restored)
    torch.save(restored, workdir / f"params-rank{rank}.pt")

    @rank_zero_only
    def only_on_zero(value: int) -> str:
        return f"ran on rank {value}"

    return {
        "epochs_run": result.epochs_run,
        "global_step": result.global_step,
        "last": last,
        "all_last": gather_objects(last),
        "restored_from": None if report is None else report.path,
        "restored_step": None if report is None else report.global_step,
        "changed_by_restore": not torch.equal(before, restored),
        "equal_to_trained": torch.equal(restored, trained),
        "optimizer_restored": bool(trained_velocity.abs().sum() > 0)
        and torch.equal(torch.cat([v.reshape(-1) for v in optimizer2.velocity.values()]), trained_velocity),
        "equal_across_ranks": all(torch.equal(gathered[0], g) for g in gathered),
        "policy": policy_view(policy),
        "rank_zero_only": only_on_zero(rank),
        "is_global_zero": ckpt.is_global_zero,
        "world_size": ckpt.world_size,
    }


def scenario_fail(rank: int, workdir: Path) -> dict[str, Any]:
    spy_on_saves(rank, workdir)
    if rank == 0:
        real_replace = os.replace

        def failing_replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if TEMP_MARKER in os.fspath(src):
                raise OSError(errno.EIO, "Input/output error (injected on rank 0)")
            real_replace(src, dst, *args, **kwargs)

        os.replace = failing_replace  # type: ignore[assignment]
        UNDO.append(lambda: setattr(os, "replace", real_replace))
    ckpt, model, optimizer = make_setup(workdir / "run", seed=0, callbacks=[ModelCheckpoint()])
    started = time.monotonic()
    try:
        train(ckpt, model, optimizer, EPOCHS)
    except Exception as exc:
        return {
            "raised": type(exc).__name__,
            "mro": [cls.__name__ for cls in type(exc).__mro__],
            "message": str(exc),
            "seconds": time.monotonic() - started,
            "global_step": ckpt.global_step,
        }
    return {"raised": None, "global_step": ckpt.global_step}


def scenario_link(rank: int, workdir: Path) -> dict[str, Any]:
    """save_last="link": the writer hard-links last.ckpt; every rank must take the same path."""
    spy_on_saves(rank, workdir)
    policy = ModelCheckpoint(
        monitor="epoch", mode="max", save_top_k=1, save_last="link", filename="{epoch}"
    )
    ckpt, model, optimizer = make_setup(workdir / "run", seed=0, callbacks=[policy])
    result = train(ckpt, model, optimizer, EPOCHS)
    dist.barrier()
    folder = workdir / "run" / "checkpoints"
    return {
        "global_step": result.global_step,
        "last_model_path": policy.last_model_path,
        "files": sorted(os.listdir(folder)),
        "linked": os.path.samefile(folder / "last.ckpt", folder / "epoch=1.ckpt"),
    }


#: validation losses each rank logs per epoch: rank 1 ranks the epochs the other way round
LOCAL_VAL_LOSS = {0: [3.0, 1.0, 2.0], 1: [0.5, 9.0, 0.25]}


def scenario_metrics(rank: int, workdir: Path) -> dict[str, Any]:
    """Every rank logs a different val_loss: rank 0's values decide the ranking, names and scores."""
    spy_on_saves(rank, workdir)
    policy = ModelCheckpoint(monitor="val_loss", save_top_k=2, filename="{epoch}-{val_loss:.2f}", save_last=True)
    ckpt, model, optimizer = make_setup(workdir / "run", seed=0, callbacks=[policy])
    data = make_data(batches=2)

    @ckpt.loop(max_epochs=3)
    def epoch_fn(epoch: int) -> None:
        for x, y in ckpt.batches(data):
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
        ckpt.log("val_loss", LOCAL_VAL_LOSS[rank][epoch])

    epoch_fn()
    dist.barrier()
    folder = workdir / "run" / "checkpoints"
    manifests = {
        name: json.loads((folder / name).read_text())["metrics"]["val_loss"]
        for name in sorted(os.listdir(folder))
        if name.endswith(".manifest.json")
    }
    return {
        "best_model_path": policy.best_model_path,
        "best_model_score": policy.best_model_score,
        "best_k_models": policy.best_k_models,
        "kth_value": policy.kth_value,
        "last_model_path": policy.last_model_path,
        "files": sorted(os.listdir(folder)),
        "manifest_val_loss": manifests,
    }


def scenario_time_interval(rank: int, workdir: Path) -> dict[str, Any]:
    """train_time_interval with clocks that disagree (rank 1's runs 20 times faster): rank 0's
    clock decides for every rank, so every rank saves at the same steps."""
    from ckpthooks._policies import schedule

    spy_on_saves(rank, workdir)
    if rank == 1:
        real_time = schedule.time

        class FastClock:
            @staticmethod
            def monotonic() -> float:
                return real_time.monotonic() * 20

        schedule.time = FastClock  # type: ignore[assignment]
        UNDO.append(lambda: setattr(schedule, "time", real_time))
    policy = ModelCheckpoint(train_time_interval=timedelta(seconds=0.25), save_top_k=-1, filename="{step}")

    class Slow(Callback):
        def on_train_batch_end(self, checkpointer: Any) -> None:
            time.sleep(0.05)

    ckpt, model, optimizer = make_setup(workdir / "run", seed=0, callbacks=[Slow(), policy])
    data = make_data(batches=6)

    @ckpt.loop(max_epochs=1)
    def epoch_fn(epoch: int) -> None:
        for x, y in ckpt.batches(data):
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()

    epoch_fn()
    dist.barrier()
    return {"files": sorted(os.listdir(workdir / "run" / "checkpoints")), "policy": policy_view(policy)}


def _train_and_save(rank: int, root: Path) -> tuple[torch.Tensor, str]:
    policy = ModelCheckpoint(save_top_k=1, save_last=True)
    ckpt, model, optimizer = make_setup(root, seed=0, callbacks=[policy])
    train(ckpt, model, optimizer, EPOCHS)
    return flat(model), policy.last_model_path


def scenario_restore_views(rank: int, workdir: Path) -> dict[str, Any]:
    """Rank 1 sees another folder (a stale local disk, say) whose "last" is older: every rank must
    resume from the checkpoint rank 0 found. (One at a later step stops every rank instead:
    tests/test_two_nodes.py.)"""
    trained, last = _train_and_save(rank, workdir / "shared")
    if rank == 1:  # what only rank 1 sees: a committed checkpoint at an earlier step
        model = TinyNet()
        own = Checkpointer(workdir / "rank1-only", enable_checkpointing=False).track(model=model)
        own.progress.global_step = 3
        own.store.save(own.dump_checkpoint(), str(workdir / "rank1-only" / "older.ckpt"), epoch=0, global_step=3)
    dist.barrier()
    root = workdir / ("shared" if rank == 0 else "rank1-only")
    ckpt, model, _optimizer = make_setup(root, seed=50 + rank, callbacks=[ModelCheckpoint(save_last=True)])
    own_view = ckpt.committed_checkpoints()[0].path
    checks: list[str] = []  # every check of a checkpoint's bytes on this rank (the store makes them all)
    import ckpthooks._store as store_module

    real_verify = store_module.verify_checkpoint

    def counting(path: str, *args: Any, **kwargs: Any) -> Any:
        checks.append(path)
        return real_verify(path, *args, **kwargs)

    store_module.verify_checkpoint = counting  # type: ignore[assignment]
    UNDO.append(lambda: setattr(store_module, "verify_checkpoint", real_verify))
    report = ckpt.restore("last")
    restored = flat(model)
    return {
        "own_view": own_view,
        "restored_from": None if report is None else report.path,
        "restored_step": None if report is None else report.global_step,
        "rank0_last": last,
        "equal_to_trained": torch.equal(restored, trained),
        "all_restored": [t.tolist() for t in gather_objects(restored)],
        "checks": checks,
    }


def scenario_restore_unreadable(rank: int, workdir: Path) -> dict[str, Any]:
    """Rank 1 cannot read the checkpoint rank 0 chose: every rank raises, none trains on."""
    from ckpthooks._store import CheckpointStore

    _train_and_save(rank, workdir / "shared")
    dist.barrier()
    if rank == 1:
        real_load = CheckpointStore.load

        def load(self: CheckpointStore, path: str, **kwargs: Any) -> Any:
            raise CheckpointNotFoundError(f"no checkpoint at {path} (not visible on rank 1)")

        CheckpointStore.load = load  # type: ignore[method-assign]
        UNDO.append(lambda: setattr(CheckpointStore, "load", real_load))
    ckpt, _model, _optimizer = make_setup(workdir / "shared", seed=0, callbacks=[ModelCheckpoint(save_last=True)])
    started = time.monotonic()
    try:
        ckpt.restore("last")
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - started}
    return {"raised": None}


def scenario_mismatch(rank: int, workdir: Path) -> dict[str, Any]:
    """save_checkpoint with a path that depends on the rank: detected before anything is written."""
    spy_on_saves(rank, workdir)
    ckpt, _model, _optimizer = make_setup(workdir / "run", seed=0, callbacks=[])
    started = time.monotonic()
    try:
        ckpt.save_checkpoint(workdir / "run" / f"manual-rank{rank}.ckpt")
    except Exception as exc:
        return {"raised": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - started}
    return {"raised": None}


def scenario_one_sided(rank: int, workdir: Path) -> dict[str, Any]:
    """save_checkpoint on rank 0 only (as under `if rank == 0`): rank 0 raises once the process
    group's timeout (lowered to 2 s here) passes. Breaks the process group: runs last."""
    from torch.distributed.distributed_c10d import _set_pg_timeout

    done = workdir / "rank0-done"
    _set_pg_timeout(timedelta(seconds=2))
    ckpt, _model, _optimizer = make_setup(workdir / "run", seed=0, callbacks=[])
    if rank != 0:
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return {"waited_for_rank0": done.exists()}
    started = time.monotonic()
    try:
        ckpt.save_checkpoint(workdir / "run" / "alone.ckpt")
    except Exception as exc:
        result = {"raised": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - started}
    else:
        result = {"raised": None}
    done.write_text("")
    result["written"] = os.path.exists(workdir / "run" / "alone.ckpt")
    return result


SCENARIOS = {
    "link": scenario_link,
    "fit": scenario_fit,
    "fit_straggler": lambda rank, workdir: scenario_fit(rank, workdir, straggle=0.5),
    "fail": scenario_fail,
    "metrics": scenario_metrics,
    "time_interval": scenario_time_interval,
    "restore_views": scenario_restore_views,
    "restore_unreadable": scenario_restore_unreadable,
    "mismatch": scenario_mismatch,
    "one_sided": scenario_one_sided,
}

#: scenarios that leave the process group unusable (a timed-out collective): they run last
TERMINAL = {"one_sided"}


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
                break  # the other rank may be stuck in a collective: end (it times out)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
