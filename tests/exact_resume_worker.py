"""A deterministic training run for the exact-resume tests (run as a script, not collected).

    python tests/exact_resume_worker.py ROOT --summary OUT.json [--kill-at-step K] [--workers W]
        [--val-every V [--kill-in-validation K]] [--kill-at-epoch-end E]

Model with dropout, shuffled DataLoader, AdamW, a per-step LR scheduler, checkpoints every N steps
(``--every``, into ``ROOT/checkpoints``), ``ckpt_path="last"``. With ``--kill-at-step K`` the process
SIGKILLs itself right after step K's callbacks, or, when step K saves, once the first checkpoint of
step K is committed. With ``--kill-at-epoch-end E`` it dies after epoch E's end events.

``--val-every V`` (0, the default, is off) adds a validation inside the batch loop, as Lightning's
``val_check_interval=V`` does: after every V-th batch of an epoch, once the optimizer and the
scheduler stepped, the model is evaluated (``eval()``, ``no_grad()``) on a fixed held-out set through
an unshuffled DataLoader (whose iterator draws from the global random generator, as a real one
does), ``val_loss`` is logged and ``ckpt.validation_end()`` is called. A second policy then saves by
that monitor: ``ModelCheckpoint(monitor="val_loss", save_top_k=2, dirpath=ROOT/best)``, beside the
step-triggered one. ``--kill-in-validation K`` dies in the validation of step K, after ``ckpt.log``
and before ``ckpt.validation_end()``.

The summary holds digests of the final model, optimizer and scheduler state (equal digests mean
bitwise-equal state), the step and file the run resumed from, and in validation mode what the
policies' bookkeeping must also reproduce: the monitor policy's ``best_model_score`` and
``best_model_path``, the ``*.ckpt`` files kept in each policy's folder, and the events a stateful
callback (``EventLog``) was sent: batch ends, validation ends and epoch ends, restored from the
checkpoint and continued.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ckpthooks import Callback, Checkpointer, ModelCheckpoint


class Killer(Callback):
    """Dies right after step ``step``'s events: at its batch end, or, when the step saves (a
    multiple of ``every``), once that checkpoint is committed (policies run after every other
    callback, as in Lightning, so the batch end comes before the save). A validation save inside
    the batch is committed before the batch ends, so a step that validates and saves dies there.

    ``at_epoch_end``: dies after epoch ``at_epoch_end``'s end events, at the validation end that
    ``epoch_end()`` sends when the epoch had no validation of its own, else (validation mode, where
    it has) at the start of the next epoch, before any of its batches."""

    def __init__(self, step: int | None, at_epoch_end: int | None, every: int) -> None:
        self.step = step
        self.at_epoch_end = at_epoch_end
        self.every = every

    def on_train_batch_end(self, checkpointer: Any) -> None:
        if self.step is not None and checkpointer.global_step == self.step and self.step % self.every:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint_committed(self, checkpointer: Any, path: str, manifest: Any) -> None:
        if manifest.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_end(self, checkpointer: Any) -> None:
        # only the validation epoch_end() stands in for: the epoch's batches are all done by then
        if checkpointer.current_epoch == self.at_epoch_end and checkpointer.progress.epoch_finished:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, checkpointer: Any) -> None:
        if self.at_epoch_end is not None and checkpointer.current_epoch == self.at_epoch_end + 1:
            os.kill(os.getpid(), signal.SIGKILL)


class EventLog(Callback):
    """A stateful callback (validation mode): the loop events it was sent, saved with every
    checkpoint. A resumed run must end with the uninterrupted run's list, as a callback that keeps
    an average of the weights at every batch end must end with its average."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_train_batch_end(self, checkpointer: Any) -> None:
        self.events.append(f"batch_end {checkpointer.global_step}")

    def on_validation_end(self, checkpointer: Any) -> None:
        self.events.append(f"validation_end {checkpointer.global_step}")

    def on_train_epoch_end(self, checkpointer: Any) -> None:
        self.events.append(f"epoch_end {checkpointer.current_epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {"events": list(self.events)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events = list(state_dict["events"])


def digest(obj: Any) -> str:
    hasher = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            hasher.update(str(value.dtype).encode())
            hasher.update(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                hasher.update(repr(key).encode())
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                feed(item)
        else:
            hasher.update(repr(value).encode())

    feed(obj)
    return hasher.hexdigest()


def kept_files(folder: Path) -> list[str]:
    """The names of the checkpoints in ``folder`` (not the manifests or other files beside them)."""
    return sorted(path.name for path in folder.glob("*.ckpt")) if folder.is_dir() else []


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--summary", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--kill-at-epoch-end", type=int)
    parser.add_argument("--signals", default="TERM", help="preemption signals, e.g. TERM,USR1")
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per step")
    parser.add_argument("--val-every", type=int, default=0, help="validate after every N batches (0: never)")
    parser.add_argument("--kill-in-validation", type=int, help="die in this step's validation, before its end")
    args = parser.parse_args()
    signals = [getattr(signal, f"SIG{name}") for name in args.signals.split(",") if name]

    torch.manual_seed(0)
    data = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    target = data.sum(dim=1, keepdim=True)
    loader = DataLoader(TensorDataset(data, target), batch_size=8, shuffle=True, num_workers=args.workers)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.9)

    val_data = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    val_loader = DataLoader(TensorDataset(val_data, val_data.sum(dim=1, keepdim=True)), batch_size=16)

    root = Path(args.root).resolve()
    policy = ModelCheckpoint(filename="{step}", every_n_train_steps=args.every)
    callbacks: list[Callback] = [policy]
    best: ModelCheckpoint | None = None
    events: EventLog | None = None
    if args.val_every:
        # an explicit dirpath gives it a state key of its own, and a folder of its own
        best = ModelCheckpoint(
            dirpath=root / "best", filename="{step}-{val_loss:.4f}", monitor="val_loss", save_top_k=2
        )
        events = EventLog()
        callbacks += [best, events]
    ckpt = Checkpointer(
        args.root,
        callbacks=[*callbacks, Killer(args.kill_at_step, args.kill_at_epoch_end, args.every)],
        preemption_signals=signals,
    )
    ckpt.track(model=model, optimizers=optimizer, lr_schedulers=scheduler)

    def validate() -> None:
        model.eval()
        with torch.no_grad():
            losses = [nn.functional.mse_loss(model(x), y, reduction="sum") for x, y in val_loader]
        model.train()
        ckpt.log("val_loss", torch.stack(losses).sum() / len(val_data))
        print(f"validation at step {ckpt.global_step}: val_loss {ckpt.callback_metrics['val_loss']:.4f}", flush=True)
        if ckpt.global_step == args.kill_in_validation:
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.validation_end()

    @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")
    def train_one_epoch(epoch: int) -> None:
        model.train()
        for x, y in ckpt.batches(loader):
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            print(f"step {ckpt.global_step}", flush=True)  # counts this batch once its optimizer stepped
            if args.val_every and (ckpt.batch_idx + 1) % args.val_every == 0:  # batch_idx: batches done before
                validate()
            if args.step_delay:
                time.sleep(args.step_delay)

    result = train_one_epoch()
    resumed_from = None if result.restore is None else Path(result.restore.path).resolve().relative_to(root).as_posix()
    summary: dict[str, Any] = {
        "global_step": ckpt.global_step,
        "resumed_from_step": None if result.restore is None else result.restore.global_step,
        "model": digest(model.state_dict()),
        "optimizer": digest(optimizer.state_dict()),
        "scheduler": digest(scheduler.state_dict()),
        "resumed_from": resumed_from,
    }
    if best is not None and events is not None:
        summary.update(
            events=events.events,
            best_model_score=best.best_model_score,
            best_model_path=Path(best.best_model_path).name,
            kept={folder: kept_files(root / folder) for folder in ("checkpoints", "best")},
        )
    Path(args.summary).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
