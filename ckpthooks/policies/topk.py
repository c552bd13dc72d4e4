"""Top-k bookkeeping: which checkpoints are the k best by a monitored value."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["min", "max"]


@dataclass
class TopK:
    """The k best (path -> score) by ``mode``; ``k == -1`` keeps everything.

    Ties: a new score equal to the current k-th best does not displace it (Lightning's rule), so
    the earlier checkpoint stays.
    """

    k: int
    mode: Mode = "min"
    scores: dict[str, float] = field(default_factory=dict)

    def better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    @property
    def kth_path(self) -> str | None:
        """The worst path still kept (the one the next better score replaces)."""
        if not self.scores:
            return None
        pick = max if self.mode == "min" else min
        return pick(self.scores, key=lambda p: self.scores[p])

    @property
    def kth_value(self) -> float | None:
        path = self.kth_path
        return None if path is None else self.scores[path]

    @property
    def best_path(self) -> str | None:
        if not self.scores:
            return None
        pick = min if self.mode == "min" else max
        return pick(self.scores, key=lambda p: self.scores[p])

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
        self.scores[path] = score

    def discard(self, path: str) -> None:
        self.scores.pop(path, None)
