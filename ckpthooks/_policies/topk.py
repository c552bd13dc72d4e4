"""Top-k bookkeeping: which checkpoints are the k best by a monitored value."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Mode = Literal["min", "max"]


class Change(NamedTuple):
    """How to undo one change of :attr:`TopK.scores`: the entry as it was before."""

    path: str
    #: the score before the change; ``None`` when ``path`` was not kept
    score: float | None
    #: where a removed entry stood in the insertion order (``-1`` when it was not removed)
    position: int


@dataclass
class TopK:
    """The k best (path -> score) by ``mode``; ``k == -1`` keeps everything.

    Ties: a new score equal to the current k-th best does not displace it (Lightning's rule), so
    the earlier checkpoint stays. Among equal scores kept, :attr:`best_path` and :attr:`kth_path`
    pick the earliest entry of ``scores``: its order matters.

    Change ``scores`` with :meth:`add` and :meth:`discard`: while a :meth:`savepoint` is open they
    record how to undo themselves, so that :meth:`rollback` restores ``scores`` exactly (values and
    order) at a cost proportional to the changes made, not to the entries kept.
    """

    k: int
    mode: Mode = "min"
    scores: dict[str, float] = field(default_factory=dict)
    #: the changes since the oldest open savepoint, oldest first; ``None`` when none is open
    journal: list[Change] | None = field(default=None, init=False, repr=False, compare=False)
    _open: int = field(default=0, init=False, repr=False, compare=False)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    @property
    def kth_path(self) -> str | None:
        """The worst path still kept (the one the next better score replaces)."""
        if not self.scores:
            return None
        pick = max if self.mode == "min" else min
        return pick(self.scores, key=self.scores.__getitem__)

    @property
    def kth_value(self) -> float | None:
        path = self.kth_path
        return None if path is None else self.scores[path]

    @property
    def best_path(self) -> str | None:
        if not self.scores:
            return None
        pick = min if self.mode == "min" else max
        return pick(self.scores, key=self.scores.__getitem__)

    @property
    def best_value(self) -> float | None:
        path = self.best_path
        return None if path is None else self.scores[path]

    def qualifies(self, score: float) -> bool:
        """Whether ``score`` earns a place (never for NaN or infinite scores)."""
        if not math.isfinite(score) or self.k == 0:
            return False
        if self.k < 0 or len(self.scores) < self.k:
            return True
        kth = self.kth_value
        return kth is None or self.better(score, kth)

    def displaced(self) -> str | None:
        """The path that must go to make room for one more (when already holding k)."""
        if self.k > 0 and len(self.scores) >= self.k:
            return self.kth_path
        return None

    def add(self, path: str, score: float) -> None:
        journal = self.journal  # read once: a save worker thread may call while a savepoint closes
        if journal is not None:
            journal.append(Change(path, self.scores.get(path), -1))
        self.scores[path] = score

    def discard(self, path: str) -> None:
        if path not in self.scores:
            return
        journal = self.journal
        if journal is not None:
            # the position keeps the order (which decides ties) when the removal is undone
            journal.append(Change(path, self.scores[path], operator.indexOf(self.scores, path)))
        self.scores.pop(path, None)

    # ------------------------------------------------------------------ undo
    def savepoint(self) -> int:
        """Open a savepoint: record changes from now on; returns the mark to roll back to. Close it
        with :meth:`release`; savepoints nest."""
        if self.journal is None:
            self.journal = []
        self._open += 1
        return len(self.journal)

    def rollback(self, mark: int) -> None:
        """Undo the changes recorded since ``mark``, newest first; recording goes on."""
        journal = self.journal
        if journal is None:
            raise RuntimeError("TopK.rollback() without an open savepoint")
        while len(journal) > mark:
            change = journal.pop()
            if change.score is None:
                self.scores.pop(change.path, None)
            elif change.position < 0 or change.position >= len(self.scores):
                self.scores[change.path] = change.score
            else:
                self._insert(change.path, change.score, change.position)

    def release(self) -> None:
        """Close the newest open savepoint. Its changes stay recorded while an enclosing one is
        open (for it to undo); closing the last one stops recording."""
        if self._open <= 0:
            raise RuntimeError("TopK.release() without an open savepoint")
        self._open -= 1
        if self._open == 0:
            self.journal = None

    def _insert(self, path: str, score: float, position: int) -> None:
        """Put ``path`` back at ``position`` of the insertion order (only undoing a removal)."""
        items = list(self.scores.items())
        items.insert(position, (path, score))
        self.scores.clear()
        self.scores.update(items)
