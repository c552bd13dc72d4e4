"""Loop progress: where the training loop is, saved so a resume continues from the same place."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class LoopProgress:
    """Epoch, position inside the epoch, and global step.

    ``batch_idx`` counts the batches completed in the current epoch; ``epoch_finished`` is true once
    the epoch's end events ran. A checkpoint of a finished epoch resumes at the next epoch; one taken
    mid-epoch resumes in the same epoch after ``batch_idx`` batches.

    ``global_step`` counts the batches that made their optimizer step: it goes up when a tracked
    optimizer steps (:attr:`stepped` then marks the batch), or at the batch's end when none did.
    A save from inside the batch, after its optimizer step, records the batch as done
    (:meth:`saved`), as Lightning's validation inside the epoch runs after the batch; its end
    events have not run yet (:attr:`batch_end_pending`): a resumed epoch runs them first.
    """

    epoch: int = 0
    batch_idx: int = 0
    global_step: int = 0
    epoch_finished: bool = False
    #: random generator states when the current epoch's data iterator was created; a mid-epoch
    #: resume recreates the iterator under them, so that shuffling repeats exactly
    epoch_rng: dict[str, Any] | None = field(default=None, repr=False)
    #: a validation ran in the current epoch (after its first batch): ``epoch_end()`` then does not
    #: stand in for one, also in a run resumed after that validation
    validated: bool = False
    #: the last batch counted in :attr:`batch_idx` has not had its end events (``on_train_batch_end``)
    #: yet: the checkpoint was taken inside its body
    batch_end_pending: bool = False
    #: the current batch made its optimizer step already (``global_step`` counts it); not saved
    stepped: bool = field(default=False, compare=False)

    def saved(self) -> LoopProgress:
        """The position a checkpoint taken now records: a batch that made its optimizer step is
        done, with its end events pending."""
        if not self.stepped:
            return self
        return replace(self, batch_idx=self.batch_idx + 1, stepped=False, batch_end_pending=True)

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self.saved())
        del state["stepped"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))
        self.batch_idx = int(state.get("batch_idx", 0))
        self.global_step = int(state.get("global_step", 0))
        self.epoch_finished = bool(state.get("epoch_finished", False))
        self.epoch_rng = state.get("epoch_rng")
        self.validated = bool(state.get("validated", False))
        self.batch_end_pending = bool(state.get("batch_end_pending", False))
        self.stepped = False

    def restore(self, found: dict[str, Any]) -> None:
        """Restore from what :class:`~ckpthooks._components.ProgressComponent` found.

        Our own ``loop`` record is exact. A file without it (written by Lightning) gives only
        ``epoch`` and ``global_step``; Lightning's fit loop tells whether that epoch was completed.
        """
        loop = found.get("loop")
        if isinstance(loop, dict):
            self.load_state_dict(loop)
            return
        self.epoch = int(found.get("epoch", 0))
        self.global_step = int(found.get("global_step", 0))
        self.batch_idx = 0
        self.epoch_rng = None
        self.validated = self.batch_end_pending = False
        self.stepped = False
        completed = _lightning_completed_epochs(found.get("loops"))
        if completed is None:
            log.warning(
                "the checkpoint has no ckpthooks loop position; assuming epoch %d was finished "
                "and resuming at epoch %d",
                self.epoch,
                self.epoch + 1,
            )
            self.epoch_finished = True
        else:
            self.epoch_finished = completed > self.epoch

    @property
    def start_epoch(self) -> int:
        """The epoch a resumed loop starts with."""
        return self.epoch + 1 if self.epoch_finished else self.epoch

    @property
    def batches_to_skip(self) -> int:
        """How many batches of :attr:`start_epoch` were already done."""
        return 0 if self.epoch_finished else self.batch_idx


def _lightning_completed_epochs(loops: Any) -> int | None:
    try:
        # "processed" is incremented when the epoch's batches are done, before the epoch-end
        # callbacks (and so ModelCheckpoint) run
        return int(loops["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return None
