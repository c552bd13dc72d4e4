"""Starting an epoch part-way through, with the same batches in the same order as the interrupted run.

A mid-epoch checkpoint records how many batches of the epoch were done and the random generator
states at the start of the epoch. On resume, :func:`skip_batches` recreates the epoch's iterator under
those states (so a shuffling sampler draws the same permutation, and workers get the same seeds),
and positions it after the done batches. For a ``torch.utils.data.DataLoader`` over a map-style
dataset the skip happens in the sampler: only indices are drawn, no skipped batch is loaded. Other
iterables (lists, generators, iterable-style datasets) are advanced item by item.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class _SkippingIterator:
    """Iterates ``inner`` after skipping ``skip`` items; the skip runs at :meth:`start`."""

    def __init__(self, inner: Iterable[Any], skip: int) -> None:
        self._inner = inner
        self._skip = skip
        self._iterator: Iterator[Any] | None = None

    def start(self) -> None:
        if self._iterator is None:
            self._iterator = iter(self._inner)
            for _ in range(self._skip):
                if next(self._iterator, _END) is _END:
                    break

    def __iter__(self) -> _SkippingIterator:
        return self

    def __next__(self) -> Any:
        self.start()
        assert self._iterator is not None
        return next(self._iterator)


_END = object()


class _SkippingSampler:
    """Stands in for a DataLoader's (batch) sampler while the resumed epoch's iterator is created."""

    def __init__(self, inner: Any, skip: int) -> None:
        self.inner = inner
        self.skip = skip
        self.iterators: list[_SkippingIterator] = []

    def __iter__(self) -> _SkippingIterator:
        iterator = _SkippingIterator(self.inner, self.skip)
        self.iterators.append(iterator)
        return iterator

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def _map_style_loader(iterable: Any) -> bool:
    try:
        from torch.utils.data import DataLoader, IterableDataset
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(iterable, DataLoader) and not isinstance(iterable.dataset, IterableDataset)


def skip_batches(iterable: Iterable[T], skip: int) -> Iterator[T]:
    """``iter(iterable)`` positioned after its first ``skip`` batches.

    Call it with the random generators set as they were when the interrupted epoch began: the
    sampler's seed (and the workers' base seed) are drawn here, in the order the DataLoader draws
    them, so the resumed epoch sees the same order.
    """
    if skip <= 0:
        return iter(iterable)
    if _map_style_loader(iterable):
        loader: Any = iterable
        attribute = "batch_sampler" if loader.batch_sampler is not None else "sampler"
        original = getattr(loader, attribute)
        stand_in = _SkippingSampler(original, skip)
        # DataLoader forbids setting its samplers after construction; the swap lasts only while
        # the iterator (and, with workers, its first prefetches) is created
        object.__setattr__(loader, attribute, stand_in)
        try:
            iterator: Iterator[T] = iter(loader)
            for started in stand_in.iterators:
                started.start()  # the seed draw happens now, right after the workers' base seed
        finally:
            object.__setattr__(loader, attribute, original)
        return iterator
    iterator = iter(iterable)
    for _ in range(skip):
        if next(iterator, _END) is _END:
            break
    return iterator
