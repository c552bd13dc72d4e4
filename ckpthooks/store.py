"""The commit protocol on top of a storage backend: write, commit, verify, load, uncommit, remove.

:class:`CheckpointStore` is what the runtime, ``load_from_checkpoint`` and the CLI use to touch
checkpoints. It picks the :class:`~ckpthooks.CheckpointIO` for each path (a user's override, or the
highest-priority backend a plugin contributed for the URL's protocol), calls the storage hooks, and
keeps the invariant: a checkpoint is committed exactly when its manifest is valid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckpthooks.exceptions import CheckpointNotFoundError, ConfigurationError
from ckpthooks.io import paths
from ckpthooks.io.base import CheckpointIO, SaveResult
from ckpthooks.io.safety import check_weights_only_safe
from ckpthooks.manifest import (
    CommittedCheckpoint,
    Manifest,
    VerifyMode,
    read_manifest,
    remove_manifest,
    verify_checkpoint,
    write_manifest,
)
from ckpthooks.plugin_host import PluginHost, get_plugin_host

log = logging.getLogger(__name__)

VERIFY_MODES = ("full", "size", "off")


@dataclass
class CheckpointStore:
    """Saves, loads and removes checkpoints through the plugin host's storage hooks."""

    host: PluginHost = field(default_factory=get_plugin_host)
    checkpoint_io: CheckpointIO | None = None
    storage_options: Mapping[str, Any] | None = None
    verify: VerifyMode = "full"

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_MODES:
            raise ConfigurationError(f"verify must be one of {VERIFY_MODES}, not {self.verify!r}")

    def io_for(self, path: str) -> CheckpointIO:
        return self.checkpoint_io if self.checkpoint_io is not None else self.host.checkpoint_io_for(path)

    # ------------------------------------------------------------------ save
    def save(
        self,
        checkpoint: dict[str, Any],
        path: str,
        *,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, float] | None = None,
        weights_only: bool = False,
        writer: str | None = None,
    ) -> Manifest:
        """Write ``checkpoint`` to ``path`` and commit it. Call on the writer rank only.

        An existing checkpoint at ``path`` is uncommitted first, so a crash mid-way never leaves a
        manifest describing bytes it does not match.
        """
        check_weights_only_safe(checkpoint)
        io = self.io_for(path)
        if read_manifest(path, self.storage_options) is not None:
            remove_manifest(path, self.storage_options)
        result = self.host.save_checkpoint(checkpoint, path, self.storage_options, io)
        if not isinstance(result, SaveResult):
            fs = paths.filesystem(path, self.storage_options)
            result = SaveResult(size=int(fs.size(paths.fs_path(fs, path))))
        manifest = Manifest(
            file=paths.basename(path),
            size=result.size,
            checksum=result.checksum,
            algorithm=result.algorithm,
            epoch=int(epoch),
            global_step=int(global_step),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            created=time.time(),
            weights_only=weights_only,
            writer=writer,
            plugins=self.host.plugin_versions(),
        )
        write_manifest(path, manifest, self.storage_options)
        log.info("committed checkpoint %s (%d bytes, step %d)", path, result.size, global_step)
        return manifest

    # ------------------------------------------------------------------ load
    def load(
        self,
        path: str,
        *,
        map_location: Any = None,
        weights_only: bool = True,
        verify: VerifyMode | None = None,
        require_manifest: bool = False,
    ) -> dict[str, Any]:
        """Verify (when a manifest exists) and load the checkpoint at ``path``.

        Files without a manifest (written by Lightning or ``torch.save``) load unverified unless
        ``require_manifest`` is set.
        """
        mode = verify or self.verify
        manifest = read_manifest(path, self.storage_options)
        if manifest is None:
            if require_manifest:
                raise CheckpointNotFoundError(f"{path} is not a committed ckpthooks checkpoint")
            fs = paths.filesystem(path, self.storage_options)
            if not fs.exists(paths.fs_path(fs, path)):
                raise CheckpointNotFoundError(f"no checkpoint at {path}")
            log.info("%s has no ckpthooks manifest; loading it without verification", path)
        else:
            verify_checkpoint(path, manifest, mode, self.storage_options)
        return self.host.load_checkpoint(
            path, self.storage_options, self.io_for(path), map_location, weights_only
        )

    def verify_committed(self, committed: CommittedCheckpoint, verify: VerifyMode | None = None) -> None:
        """Check a committed checkpoint's bytes against its manifest."""
        verify_checkpoint(committed.path, committed.manifest, verify or self.verify, self.storage_options)

    # ------------------------------------------------------------------ remove
    def remove(self, path: str) -> None:
        """Uncommit (remove the manifest), then delete the data. Call on the writer rank only."""
        remove_manifest(path, self.storage_options)
        self.host.remove_checkpoint(path, self.storage_options, self.io_for(path))
        log.info("removed checkpoint %s", path)
