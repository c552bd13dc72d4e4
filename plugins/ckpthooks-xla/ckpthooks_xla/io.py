"""``XLACheckpointIO``: the torch backend, with XLA tensors moved to the CPU first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ckpthooks.plugin import SaveResult, TorchCheckpointIO

from ckpthooks_xla.cpu import move_to_cpu


class XLACheckpointIO(TorchCheckpointIO):
    """:class:`~ckpthooks.TorchCheckpointIO` for checkpoints that hold XLA tensors.

    ``save_checkpoint`` copies every XLA tensor to the CPU (after running its pending computation,
    as ``xm.save`` does), then writes exactly like the torch backend: streamed to a temporary file,
    fsynced, renamed, with the size and checksum returned for the commit manifest. The files are
    ordinary ``torch.save`` files of CPU tensors; ``torch.load(weights_only=True)`` reads them
    anywhere, without torch_xla. Loading is the torch backend's: tensors come back on the CPU (or
    ``map_location``), and ``load_state_dict`` copies them onto the device of your model and
    optimizer.

    Like every backend it runs on the writer rank only. Constructor arguments are the torch
    backend's (``checksum_algorithm``, ``retry``).
    """

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SaveResult:
        return super().save_checkpoint(move_to_cpu(checkpoint), path, storage_options=storage_options)
