"""The commit protocol on top of a storage backend: write, commit, verify, load, uncommit, remove.

:class:`CheckpointStore` is what the runtime, ``load_from_checkpoint`` and the CLI use to touch
checkpoints. It picks the :class:`~ckpthooks.CheckpointIO` for each path (a user's override, or the
highest-priority backend a plugin contributed for the URL's protocol), calls the storage hooks, and
keeps the invariant: a checkpoint is committed exactly when its manifest is valid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ckpthooks import _commit as commit
from ckpthooks import _distributed as distributed
from ckpthooks._catalog import read_manifest, verify_checkpoint, write_manifest
from ckpthooks._io import paths, staging
from ckpthooks._io.base import CheckpointIO, SaveResult
from ckpthooks._io.hashing import HashingWriter
from ckpthooks._io.location import Location
from ckpthooks._io.safety import check_weights_only_safe
from ckpthooks._manifest import CommittedCheckpoint, Manifest, VerifyMode
from ckpthooks._plugin_host import PluginHost, get_plugin_host
from ckpthooks._resident import ReadPacer, pacing
from ckpthooks._version import FORMAT_VERSION, __version__
from ckpthooks.exceptions import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigurationError,
    IncompatibleFormatError,
    StorageError,
)

log = logging.getLogger(__name__)

VERIFY_MODES = ("full", "size", "off")


def check_format_version(checkpoint: Mapping[str, Any], where: str) -> None:
    """Raise :class:`IncompatibleFormatError` when ``checkpoint`` was written in a newer ckpthooks
    format (``checkpoint["ckpthooks"]["format_version"]``) than this version reads."""
    space = checkpoint.get("ckpthooks")
    version = space.get("format_version") if isinstance(space, Mapping) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise IncompatibleFormatError(
            f"{where} was written by a newer ckpthooks: its checkpoint format is {version}, but "
            f"ckpthooks {__version__} reads formats up to {FORMAT_VERSION}. Upgrade ckpthooks "
            "to load it."
        )


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
        """Write ``checkpoint`` to ``path`` and commit it. Call on the writer rank only. (A collective
        backend's save is :meth:`save_collective`, called on every rank; in a single process this
        method hands it over.)

        The commit follows :mod:`ckpthooks._commit`: an existing checkpoint at ``path`` is kept as
        its previous version and uncommitted first, so a crash mid-way never leaves a manifest
        describing bytes it does not match; where data is written in place (object stores) a
        pending marker announces the save until its manifest is written.
        """
        io = self.io_for(path)
        if io.collective:
            committed = self.save_collective(
                checkpoint, path, epoch=epoch, global_step=global_step, metrics=metrics,
                weights_only=weights_only, writer=writer,
            )  # fmt: skip
            if committed is None:
                raise ConfigurationError(f"{path}: a collective backend's save runs on every rank; use save_collective")
            return committed
        check_weights_only_safe(checkpoint)

        def write() -> SaveResult:
            result = self.host.save_checkpoint(checkpoint, path, self.storage_options, io)
            if not isinstance(result, SaveResult):
                result = SaveResult(size=Location.of(path, self.storage_options).stored_size())
            return result

        return commit.commit(
            path,
            write,
            lambda result: self._manifest(path, result, epoch, global_step, metrics, weights_only, writer),
            self.storage_options,
        )

    def commit_stream(
        self,
        path: str,
        write: Callable[[CheckpointIO], SaveResult],
        manifest_for: Callable[[SaveResult], Manifest],
    ) -> Manifest:
        """The streaming commit, for bytes that are not a checkpoint dict to serialize: ``ckpthooks
        copy`` and ``convert`` commit through it. ``write(io)`` writes the data at ``path`` (through
        :meth:`write_bytes`, or hashing bytes already in place) and returns their size and checksum;
        ``manifest_for(result)`` is the manifest to commit. The protocol is :meth:`save`'s: a
        committed checkpoint at ``path`` is kept as its previous version and uncommitted first,
        remote data goes behind a pending marker, the manifest is written last, and a failure
        before the commit commits the old version again when its bytes are intact."""
        return commit.commit(path, lambda: write(self.io_for(path)), manifest_for, self.storage_options)

    def write_bytes(
        self,
        io: CheckpointIO,
        path: str,
        serialize: Callable[[HashingWriter], object],
        *,
        checksum_algorithm: str | None = None,
    ) -> SaveResult:
        """Write the bytes ``serialize(writer)`` produces to ``path`` durably, through the
        ``write_checkpoint_bytes`` storage hook: a plugin's implementation, else the backend's
        :meth:`~ckpthooks.CheckpointIO.write_bytes`, else as ckpthooks writes files
        (:func:`~ckpthooks.plugin.write_durably`)."""
        return self.host.write_checkpoint_bytes(
            path, serialize, self.storage_options, io, checksum_algorithm=checksum_algorithm
        )

    def save_collective(
        self,
        checkpoint: dict[str, Any],
        path: str,
        *,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, float] | None,
        weights_only: bool,
        writer: str | None,
    ) -> Manifest | None:
        """Save through a collective backend (``CheckpointIO.collective``): call on every rank, each
        with its own part; returns the manifest on rank 0, ``None`` on the others.

        1. Every rank checks its dict; rank 0 keeps a committed checkpoint at ``path`` aside,
           committed under its hidden previous-version name (a folder is renamed, a file linked),
           and uncommits ``path``. On an object store (no rename) rank 0 writes the pending marker
           and deletes what is at ``path`` instead: the ranks write under the final name. The
           ranks agree.
        2. Every rank calls the ``save_checkpoint`` hook; the backend coordinates the ranks (the
           DCP backend writes a fresh folder and renames it into place on rank 0). The ranks agree.
        3. Rank 0 writes the manifest: the commit. The ranks agree, then rank 0 drops the kept
           previous version.

        Each step ends with :func:`ckpthooks._distributed.agree_on_outcome`, so an error on any rank
        raises on every rank at the same step. A failure before the commit commits the kept
        previous version at ``path`` again when the new data did not replace it.
        """
        io = self.io_for(path)
        writer_rank = distributed.is_global_zero(self.host)
        in_place = not Location.of(path, self.storage_options).renames_atomically
        old: Manifest | None = None
        previous: str | None = None
        manifest: Manifest | None = None
        try:
            error: BaseException | None = None
            try:
                check_weights_only_safe(checkpoint)
                if writer_rank:
                    old, previous = commit.prepare_overwrite(path, self.storage_options)
                    if in_place:  # an object store: the ranks write under the final name
                        commit.write_pending_marker(path, self.storage_options)
                        Location.of(path, self.storage_options).remove_tree()  # an older version's files
            except Exception as exc:
                error = exc
            distributed.agree_on_outcome(error, f"preparing {path}", host=self.host)

            result: Any = None
            try:
                result = self.host.save_checkpoint(checkpoint, path, self.storage_options, io)
            except Exception as exc:
                error = exc
            distributed.agree_on_outcome(error, f"writing {path}", host=self.host)

            if writer_rank:
                try:
                    if not isinstance(result, SaveResult):
                        result = SaveResult(size=Location.of(path, self.storage_options).stored_size())
                    manifest = self._manifest(path, result, epoch, global_step, metrics, weights_only, writer)
                    write_manifest(path, manifest, self.storage_options)
                except Exception as exc:
                    error = exc
            distributed.agree_on_outcome(error, f"committing {path}", host=self.host)
        except BaseException:
            if writer_rank and old is not None and previous is not None:
                commit.recommit_folder(path, old, previous, self.storage_options)
            raise
        if writer_rank:
            commit.finish_overwrite(path, previous)
            if in_place:
                try:
                    commit.remove_pending_marker(path, self.storage_options)
                except OSError as exc:  # committed already; the next start removes the marker
                    log.warning("committed %s, but could not remove its pending marker: %s", path, exc)
            assert manifest is not None
            log.info("committed checkpoint %s (%d bytes, step %d)", path, manifest.size, global_step)
        return manifest

    def _manifest(
        self,
        path: str,
        result: SaveResult,
        epoch: int,
        global_step: int,
        metrics: Mapping[str, float] | None,
        weights_only: bool,
        writer: str | None,
    ) -> Manifest:
        return Manifest(
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

    def link(self, source: str, target: str, *, writer: str | None = None) -> Manifest:
        """Commit ``target`` as a hard link to the committed checkpoint file ``source`` (no second
        write; see :func:`ckpthooks._commit.commit_link`). Call on the writer rank only."""
        if read_manifest(source, self.storage_options) is None:
            raise CheckpointNotFoundError(f"cannot link {target} to {source}: not a committed checkpoint")
        return commit.commit_link(source, target, writer=writer)

    # ------------------------------------------------------------------ load
    def load(
        self,
        path: str,
        *,
        map_location: Any = None,
        weights_only: bool = True,
        verify: VerifyMode | None = None,
        require_manifest: bool = False,
        prepare: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """Verify (when a manifest exists) and load the checkpoint at ``path``.

        Files without a manifest (written by Lightning or ``torch.save``) load unverified unless
        ``require_manifest`` is set.

        ``prepare``, when given, is called with the loaded checkpoint while a local file's checksum
        is still being verified (:func:`~ckpthooks._state_assembly.prepare_restore`); it must not
        change live objects. Where the checksum is verified before the load instead, it is not
        called.
        """
        mode = verify or self.verify
        io = self.io_for(path)
        for _ in range(READ_ATTEMPTS):
            manifest = read_manifest(path, self.storage_options, strict=True)
            if manifest is not None and mode == "full" and _stages(path, manifest, io):
                with staging.verified_copy(path, manifest, self.storage_options) as copy:
                    if copy is not None:
                        checkpoint = self._load_copy(copy, path, io, map_location, weights_only)
                        break
            with _same_file(path, pin=manifest is not None and mode != "off") as unchanged:
                if (
                    manifest is not None
                    and mode == "full"
                    and self._verifies_alongside(path, manifest, io, weights_only)
                ):
                    checkpoint = self._load_verifying(path, manifest, io, map_location, prepare)
                else:
                    self._check_loadable(path, manifest, mode, require_manifest)
                    checkpoint = self.host.load_checkpoint(path, self.storage_options, io, map_location, weights_only)
                if unchanged():
                    break
            log.info("%s was replaced while it was checked and read; reading it again", path)
        else:
            raise StorageError(
                f"{path} was replaced {READ_ATTEMPTS} times while it was checked and read: another "
                "process keeps overwriting it; load a checkpoint that is not being written"
            )
        check_format_version(checkpoint, path)
        return checkpoint

    def _verifies_alongside(self, path: str, manifest: Manifest, io: CheckpointIO, weights_only: bool) -> bool:
        """Whether the checksum of ``path`` is computed on another thread while it loads: a local
        file (whose bytes a second reader gets from the page cache), a checksum to check, a
        non-collective backend, and ``weights_only`` (nothing but tensors and plain data is built
        from bytes not yet verified; the result is dropped unless they verify)."""
        return (
            weights_only
            and not io.collective
            and bool(manifest.checksum and manifest.algorithm)
            and Location.of(path, self.storage_options).os_path is not None
        )

    def _load_verifying(
        self,
        path: str,
        manifest: Manifest,
        io: CheckpointIO,
        map_location: Any,
        prepare: Callable[[dict[str, Any]], object] | None,
    ) -> dict[str, Any]:
        """Load ``path``, then ``prepare`` what was loaded on this thread while another computes
        the checksum; return once both are done and the checksum matches. A failed verification
        wins over a failed load: a damaged file is reported as damaged, whatever it made the
        loader do.

        The load itself (for torch files: the zip index and the pickle, the tensors left mapped)
        runs before the checksum pass starts: on a cold page cache its small reads all over the
        file would otherwise queue behind the pass's sequential read-ahead. The copies ``prepare``
        makes out of the mapping follow the pass through the file (:class:`ReadPacer`), so that
        the disk serves one sequential reader."""
        local = Location.of(path, self.storage_options).os_path
        pacer = ReadPacer(local) if local is not None and os.path.isfile(local) else None

        def verify() -> Manifest:
            try:
                return verify_checkpoint(
                    path, manifest, "full", self.storage_options, progress=pacer.advance if pacer else None
                )
            finally:
                if pacer is not None:
                    pacer.finish()

        try:
            checkpoint = self.host.load_checkpoint(path, self.storage_options, io, map_location, True)
        except BaseException:
            verify_checkpoint(path, manifest, "full", self.storage_options)  # raises for a damaged file
            raise
        if prepare is None:
            verify()
            return checkpoint
        # a pool per load, not one per process: a forked child inherits no threads
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckpthooks-verify") as pool:
            verification: Future[Manifest] = pool.submit(verify)
            try:
                with pacing(pacer) if pacer is not None else contextlib.nullcontext():
                    prepare(checkpoint)
            except BaseException as exc:
                failed = verification.exception()
                if failed is not None:
                    raise failed from exc
                raise
            verification.result()
        return checkpoint

    def _load_copy(
        self, copy: str, path: str, io: CheckpointIO, map_location: Any, weights_only: bool
    ) -> dict[str, Any]:
        """Load the verified local ``copy`` of the remote checkpoint ``path``; errors name ``path``."""
        try:
            return self.host.load_checkpoint(copy, None, io, map_location, weights_only)
        except CheckpointError as exc:
            renamed = _renamed(exc, copy, path)
            if renamed is exc:
                raise
            raise renamed from exc

    def check_loadable(self, path: str, *, verify: VerifyMode | None = None, require_manifest: bool = False) -> None:
        """What :meth:`load` checks before reading: a committed checkpoint must verify, one without
        a manifest (Lightning or ``torch.save`` files) must exist unless ``require_manifest``."""
        manifest = read_manifest(path, self.storage_options, strict=True)
        self._check_loadable(path, manifest, verify or self.verify, require_manifest)

    def _check_loadable(self, path: str, manifest: Manifest | None, mode: VerifyMode, require_manifest: bool) -> None:
        if manifest is None:
            if require_manifest:
                raise CheckpointNotFoundError(f"{path} is not a committed ckpthooks checkpoint")
            if not Location.of(path, self.storage_options).exists():
                raise CheckpointNotFoundError(f"no checkpoint at {path}")
            log.info("%s has no ckpthooks manifest; loading it without verification", path)
        else:
            verify_checkpoint(path, manifest, mode, self.storage_options)

    def verify_committed(self, committed: CommittedCheckpoint, verify: VerifyMode | None = None) -> None:
        """Check a committed checkpoint's bytes against its manifest."""
        verify_checkpoint(committed.path, committed.manifest, verify or self.verify, self.storage_options)

    # ------------------------------------------------------------------ remove
    def remove(self, path: str) -> None:
        """Uncommit (remove the manifest), then delete the data, then the kept previous version an
        interrupted overwrite left (see :func:`~ckpthooks._commit.keep_previous`): it goes with its
        checkpoint. Call on the writer rank only."""
        commit.remove(
            path,
            lambda: self.host.remove_checkpoint(path, self.storage_options, self.io_for(path)),
            self.storage_options,
        )
        log.info("removed checkpoint %s", path)


#: How often :meth:`CheckpointStore.load` reads a local checkpoint that another process replaced
#: while it was being checked and read, before it gives up.
READ_ATTEMPTS = 3


def _stages(path: str, manifest: Manifest, io: CheckpointIO) -> bool:
    """Whether a full-verification load of ``path`` goes through one verified download: where the
    bytes have no operating-system file name (remote storage) and the backend loads from one."""
    return (
        Location.of(path).os_path is None
        and io.loads_from_local_copy
        and not io.collective
        and staging.can_stage(manifest)
    )


@contextlib.contextmanager
def _same_file(path: str, *, pin: bool) -> Iterator[Callable[[], bool]]:
    """Hold the local file ``path`` open around a check and a load; yields a function telling
    whether ``path`` still names the same, unmodified file (always ``True`` unpinned; call it
    inside the ``with`` block).

    Verification and loading open the file separately: a writer renaming a new checkpoint over
    ``path`` in between would have the load read bytes nobody checked. The file held open keeps
    its inode number from being reused, so an unchanged identity means both read this file.
    """
    local = Location.of(path).os_path if pin else None
    handle: int | None = None
    if local is not None:
        try:
            handle = os.open(local, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
            if not stat.S_ISREG(os.fstat(handle).st_mode):  # a folder checkpoint: renamed as a whole
                os.close(handle)
                handle = None
        except OSError:
            handle = None  # the check that follows reports it
    if handle is None or local is None:
        yield lambda: True
        return
    name, held = local, handle
    try:
        before = _identity(os.fstat(held))

        def unchanged() -> bool:
            try:
                return _identity(os.stat(name)) == before == _identity(os.fstat(held))
            except OSError:
                return False

        yield unchanged
    finally:
        os.close(held)


def _identity(status: os.stat_result) -> tuple[int, ...]:
    # not st_ctime: a hard link to the file (a kept previous version) changes it, not the bytes
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _renamed(exc: CheckpointError, copy: str, path: str) -> CheckpointError:
    """``exc`` with the staged ``copy``'s name replaced by ``path`` in its message, where its
    type can be built from a message alone (else ``exc`` itself)."""
    message = str(exc)
    if copy not in message:
        return exc
    try:
        return type(exc)(message.replace(copy, path))
    except Exception:
        return exc
