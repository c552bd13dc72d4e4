"""The save strategy: how a checkpoint dict reaches the store, on which ranks, on which thread.

- **sync**: global rank 0 writes and commits; every rank learns the outcome.
- **async** (``async_save=True``): the training thread copies the state (tensors to CPU buffers),
  a worker thread of :class:`~ckpthooks._async_save.AsyncSaver` writes and commits it; a background
  failure is raised at the next save, at ``wait()`` or at ``close()``.
- **collective** (``CheckpointIO.collective``, such as a torch.distributed.checkpoint backend):
  every rank writes its own shards, rank 0 commits; never in the background.

After a commit the callbacks are told (``on_checkpoint_committed``) and the caller's
``on_committed`` runs (policies prune there); a failure there is logged, never reported as a
failed save: the checkpoint is committed already.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ckpthooks import _distributed as distributed
from ckpthooks._async_save import AsyncSaver
from ckpthooks._retention import Pruner

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._manifest import Manifest

log = logging.getLogger(__name__)


class SaveStrategy:
    """Saves for one checkpointer: sync, async or collective, as the path's backend and the
    checkpointer's options say."""

    def __init__(self, checkpointer: Checkpointer, *, async_save: bool, max_saves_in_flight: int) -> None:
        self.checkpointer = checkpointer
        #: the background saver (``async_save=True``), else ``None``
        self.saver: AsyncSaver | None = AsyncSaver(max_saves_in_flight) if async_save else None

    def save(
        self,
        path: str,
        weights_only: bool,
        writer: str | None,
        on_committed: Callable[[Manifest], None] | None,
    ) -> Manifest | None:
        """Dump and save ``path`` on every rank (see :meth:`Checkpointer.save_checkpoint`)."""
        ckpt = self.checkpointer
        distributed.agree_on_call(f"saving {path}", host=ckpt.host)
        checkpoint = ckpt.dump_checkpoint(weights_only)
        collective = ckpt.store.io_for(path).collective
        if self.saver is not None and not collective:
            self._save_in_background(path, checkpoint, weights_only, writer, on_committed)
            return None  # committed later, by the worker
        manifest: Manifest | None = None
        error: BaseException | None = None
        if ckpt.is_global_zero or collective:
            try:
                manifest = (ckpt.store.save_collective if collective else ckpt.store.save)(
                    checkpoint,
                    path,
                    epoch=ckpt.current_epoch,
                    global_step=ckpt.global_step,
                    metrics=ckpt.callback_metrics,
                    weights_only=weights_only,
                    writer=writer,
                )
            except Exception as exc:
                error = exc
            else:
                if manifest is not None:  # None on the other ranks of a collective save
                    self._after_commit(path, manifest, on_committed)
        distributed.agree_on_outcome(error, f"saving {path}", host=ckpt.host)
        return manifest

    def _save_in_background(
        self,
        path: str,
        checkpoint: dict[str, Any],
        weights_only: bool,
        writer: str | None,
        on_committed: Callable[[Manifest], None] | None,
    ) -> None:
        """Snapshot on this thread, write and commit on the worker."""
        ckpt, saver = self.checkpointer, self.saver
        assert saver is not None
        error: BaseException | None = None
        if ckpt.is_global_zero:
            try:
                saver.wait_for_slot()
                self.raise_background_error(policy_save=writer is not None)
                state, buffers = saver.snapshot(checkpoint)
                epoch, step, metrics = ckpt.current_epoch, ckpt.global_step, dict(ckpt.callback_metrics)

                def write() -> None:
                    try:
                        manifest = ckpt.store.save(
                            state, path, epoch=epoch, global_step=step, metrics=metrics,
                            weights_only=weights_only, writer=writer,
                        )  # fmt: skip
                    except BaseException as exc:
                        for cb in ckpt.callbacks:
                            cb.on_checkpoint_failed(ckpt, path, exc)
                        raise
                    finally:
                        saver.give_back(buffers)
                        pruner.saved(path)
                    self._after_commit(path, manifest, on_committed)

                pruner = Pruner.of(ckpt)
                pruner.saving(path)  # not deleted while queued or written
                try:
                    saver.submit(write)
                except BaseException:
                    pruner.saved(path)
                    raise
            except Exception as exc:
                error = exc
        distributed.agree_on_outcome(error, f"saving {path}", host=ckpt.host)

    def _after_commit(self, path: str, manifest: Manifest, on_committed: Callable[[Manifest], None] | None) -> None:
        ckpt = self.checkpointer
        try:
            for cb in ckpt.callbacks:
                cb.on_checkpoint_committed(ckpt, path, manifest)
            if on_committed is not None:
                on_committed(manifest)
        except Exception as exc:  # raising here would skip the outcome all ranks wait for
            log.error("after committing %s: %s; older files may be left behind", path, exc)

    def remove(self, path: str) -> bool:
        """Uncommit and delete ``path`` on the writer rank, through the
        :class:`~ckpthooks._retention.Pruner` and its guards (the file the run resumed from, a file
        with a save pending, files a callback retains)."""
        return Pruner.of(self.checkpointer).remove(path)

    def settle(self) -> None:
        """Wait until another background save may start (back-pressure); a no-op without one."""
        if self.saver is not None:
            self.saver.wait_for_slot()

    def raise_background_error(self, policy_save: bool = False) -> None:
        """Raise (or, for policy saves with ``on_save_error="log"``, log) a failed background save."""
        if self.saver is None:
            return
        while (error := self.saver.take_error()) is not None:
            if policy_save and self.checkpointer.on_save_error == "log":
                log.error("a background checkpoint save failed; training goes on: %s", error)
                continue
            raise error

    def wait(self) -> None:
        """Wait until every background save is committed, on every rank; raise the first failure."""
        ckpt = self.checkpointer
        if self.saver is None:
            return
        error: BaseException | None = None
        if ckpt.is_global_zero:
            self.saver.wait()
            try:
                self.raise_background_error()
            except Exception as exc:
                error = exc
        distributed.agree_on_outcome(error, "waiting for background saves", host=ckpt.host)

    def warm_up(self) -> None:
        """At the start of training: let the background saver allocate its snapshot buffers."""
        ckpt = self.checkpointer
        if self.saver is None or not ckpt.is_global_zero:
            return
        tracked = [component.obj for component in ckpt._tracked.values()]
        self.saver.warm_up([obj for obj in (ckpt.model, *ckpt.optimizers, *tracked) if obj is not None])

    def drain_after_exception(self) -> None:
        """The loop is leaving with an exception: let the saves committed by now land, and log
        (never raise, never mask) background failures."""
        if self.saver is None:
            return
        self.saver.stop_warm_up()
        self.saver.wait()
        while (error := self.saver.take_error()) is not None:
            log.error("a background checkpoint save failed: %s", error)

    def close(self) -> None:
        """Wait for background saves and stop the worker; raise a failed one."""
        if self.saver is None:
            return
        self.saver.wait()
        pending = self.saver.take_error()
        self.saver.shutdown()
        if pending is not None:
            raise pending
