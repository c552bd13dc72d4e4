"""Lightning's ``loops`` progress counters, built from ckpthooks' loop position and read back.

Pure functions over plain values: the progress component writes ``checkpoint["loops"]`` with them
(so Lightning's ``Trainer.fit(ckpt_path=...)`` resumes a ckpthooks file), and the Lightning layout
translation reads a Lightning file's position with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _tracker(ready: int, completed: int, started: int | None = None, processed: int | None = None) -> dict[str, int]:
    """One of Lightning's progress trackers, keys in Lightning's order."""
    tracker = {"ready": ready, "completed": completed}
    if started is not None:
        tracker["started"] = started
    if processed is not None:
        tracker["processed"] = processed
    return tracker


def _same(value: int, *, completed: int | None = None, kind: str = "processed") -> dict[str, int]:
    """A tracker whose counters all equal ``value`` (``completed`` may lag behind by one)."""
    done = value if completed is None else completed
    if kind == "ready":
        return _tracker(value, done)
    if kind == "started":
        return _tracker(value, done, value)
    return _tracker(value, done, value, value)


def _progress(total: dict[str, int], current: dict[str, int], **extra: Any) -> dict[str, Any]:
    return {"total": total, "current": current, **extra}


def fit_loop_state(
    *, epoch: int, batch_idx: int, global_step: int, epoch_finished: bool, epoch_length: int | None = None
) -> dict[str, Any]:
    """Lightning 2.x's ``loops["fit_loop"]`` for a loop at this position.

    Three positions occur in a ckpthooks loop, and each is written as Lightning writes the matching
    point of its own loop (one optimizer step per training batch):

    * the epoch's batches are done (``epoch_end``, or a validation after it): Lightning's
      ``on_train_epoch_end``: the epoch is *processed* but not yet *completed*, so a resume starts
      the next epoch;
    * ``batch_idx`` batches of the epoch are done: Lightning's ``on_train_batch_end``, the last batch
      processed but not yet completed, so a resume continues the same epoch; when that was the
      epoch's last batch (``batch_idx == epoch_length``), Lightning's ``is_last_batch`` makes the
      resume start the next epoch instead of running this one again;
    * the epoch has not done any batch yet: Lightning's state between two epochs.

    Lightning reads ``current_epoch`` from ``epoch_progress.current.completed`` and ``global_step``
    from the optimizer step counter. The validation loop's and the LR-scheduler progress counters are
    not known to ckpthooks and are written as zeros (bookkeeping that Lightning's resume does not
    decide anything by); the manual-optimization step counter gets the global step, so that a
    LightningModule with manual optimization continues it too.
    """
    e, k, g = int(epoch), int(batch_idx), int(global_step)
    if epoch_finished:
        epoch_counts = _tracker(e + 1, e, e + 1, e + 1)
        batch_total, batch_current, is_last, stepped, steps_now = _same(g), _same(k), True, g, k
    elif k > 0:
        epoch_counts = _tracker(e + 1, e, e + 1, e)
        batch_total, batch_current = _same(g, completed=g - 1), _same(k, completed=k - 1)
        # Lightning counts the batch for its loggers after on_train_batch_end (and adds it back on restore)
        is_last, stepped, steps_now = epoch_length is not None and k >= epoch_length, g - 1, k
    else:
        epoch_counts = _same(e)
        batch_total, batch_current, is_last, stepped, steps_now = _same(g), _same(0), False, g, 0

    def optimizer_steps() -> dict[str, Any]:
        return _progress(_same(g, kind="ready"), _same(steps_now, kind="ready"))

    return {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": stepped},
        "epoch_loop.batch_progress": _progress(batch_total, batch_current, is_last_batch=is_last),
        "epoch_loop.scheduler_progress": _progress(_same(0, kind="ready"), _same(0, kind="ready")),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {
                "step": optimizer_steps(),
                "zero_grad": _progress(_same(g, kind="started"), _same(steps_now, kind="started")),
            }
        },
        "epoch_loop.manual_optimization.state_dict": {},
        # a LightningModule with manual optimization reads its global step from here
        "epoch_loop.manual_optimization.optim_step_progress": optimizer_steps(),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": _progress(_same(0), _same(0), is_last_batch=False),
        "epoch_progress": _progress(dict(epoch_counts), dict(epoch_counts)),
    }


def loops_state(progress: Any, epoch_length: int | None = None) -> dict[str, Any]:
    """Lightning's ``checkpoint["loops"]`` for a :class:`~ckpthooks._progress.LoopProgress`
    (``epoch_length``: the number of batches in the current epoch, when known)."""

    def evaluation(with_last_batch: bool = True) -> dict[str, Any]:
        extra = {"is_last_batch": False} if with_last_batch else {}
        return {"state_dict": {}, "batch_progress": _progress(_same(0), _same(0), **extra)}

    return {
        "fit_loop": fit_loop_state(
            epoch=progress.epoch,
            batch_idx=progress.batch_idx,
            global_step=progress.global_step,
            epoch_finished=progress.epoch_finished,
            epoch_length=epoch_length,
        ),
        "validate_loop": evaluation(),
        "test_loop": evaluation(),
        "predict_loop": evaluation(with_last_batch=False),
    }


def loop_record_from_lightning(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """ckpthooks' loop record (epoch, batch_idx, global_step, epoch_finished) from Lightning's
    ``loops``, or ``None`` when the file has no usable fit-loop progress."""
    try:
        fit = checkpoint["loops"]["fit_loop"]
        epochs = fit["epoch_progress"]["current"]
        started, processed = int(epochs["started"]), int(epochs["processed"])
        completed = int(epochs["completed"])
        batches_done = int(fit["epoch_loop.batch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None
    epoch = int(checkpoint.get("epoch", completed))
    global_step = int(checkpoint.get("global_step", 0))
    if processed > epoch:  # saved in the epoch's end hooks (ModelCheckpoint's usual place)
        return {"epoch": epoch, "batch_idx": batches_done, "global_step": global_step, "epoch_finished": True}
    if started > processed:  # saved inside the epoch: after a training batch or a validation run
        return {"epoch": epoch, "batch_idx": batches_done, "global_step": global_step, "epoch_finished": False}
    return {"epoch": epoch, "batch_idx": 0, "global_step": global_step, "epoch_finished": False}
