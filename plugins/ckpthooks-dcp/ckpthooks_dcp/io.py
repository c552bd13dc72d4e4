"""``DCPCheckpointIO``: sharded checkpoints written and read by ``torch.distributed.checkpoint``.

A checkpoint is a folder. Saving is collective (``collective = True``): the runtime calls
:meth:`DCPCheckpointIO.save_checkpoint` on every rank, each with its own checkpoint dict, whose
``DTensor`` entries hold that rank's shards (what ``model.state_dict()`` returns for a module
sharded with FSDP2's ``fully_shard`` or with DTensor placements, and the optimizer state of its
parameters). Then:

1. rank 0 names a fresh temporary sibling folder, ``.<name>.ckpthooks-tmp-<pid>-<token>-<n>``,
   and every rank learns the name (one broadcast);
2. every rank writes its shards into it with ``torch.distributed.checkpoint.save``; plain tensors
   and the structure of the dict are written once, by rank 0 (see :mod:`ckpthooks_dcp.layout`);
   DCP fsyncs every file, gathers every rank's result, and its coordinator (rank 0) writes the
   ``.metadata`` index last;
3. rank 0, once every rank has finished, fsyncs the folder and renames it to the checkpoint's
   name (whatever uncommitted folder was still there is moved aside first and deleted after).

The runtime then writes the commit manifest ``<name>.manifest.json`` on rank 0, after every rank
agreed that its part succeeded. No rank ever writes into an existing folder, committed or not.

On a filesystem without atomic renames (an object store such as ``s3://``, any fsspec URL) there
is no temporary folder: the runtime has rank 0 write a pending marker and clear the name, every
rank streams its files under the checkpoint's own name through DCP's ``FsspecWriter`` (digests
taken on the way), and rank 0 combines the checksums; the manifest commits as above.

Loading reads ``.metadata`` with a restricted unpickler (:mod:`ckpthooks_dcp.metadata`) and fills
one DCP destination per saved tensor. During :meth:`ckpthooks.Checkpointer.restore` the
destinations of tensors that are ``DTensor`` in the live model (or optimizer) are empty
``DTensor`` with the live placements, so DCP reads just this rank's shards, resharding from any
number of saving ranks; every other tensor is read whole. Outside a restore (``load_from_checkpoint``,
the command line) every tensor is read whole, in this process only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from typing import Any

from ckpthooks import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigurationError,
    CorruptCheckpointError,
    StorageError,
)
from ckpthooks.plugin import (
    CheckpointIO,
    SaveResult,
    all_gather_object,
    broadcast_object,
    filesystem,
    folder_algorithm,
    fs_path,
    fsync_dir,
    is_local,
    local_path,
    new_hasher,
    restoring_checkpointer,
    temp_name_for,
)

from ckpthooks_dcp.checksums import (
    folder_checksum,
    hashing_file_system,
    hashing_fsspec_file_system,
    relative_records,
    relative_urls,
    stored_folder_checksum,
)
from ckpthooks_dcp.layout import STRUCTURE_KEY, is_dtensor, join, split
from ckpthooks_dcp.metadata import METADATA_FILE, loads_metadata, read_metadata

log = logging.getLogger(__name__)


def local_folder(path: str) -> str:
    """The local path of the local ``path`` (callers take URLs of other filesystems elsewhere)."""
    if not is_local(path):
        raise ConfigurationError(f"{path!r} is not a local path")
    return local_path(path)


def looks_like_dcp(path: str) -> bool:
    """Whether ``path`` is a local folder holding a DCP ``.metadata`` index."""
    if not is_local(path):
        return False
    local = local_path(path)
    return os.path.isdir(local) and os.path.isfile(os.path.join(local, METADATA_FILE))


def folder_size(folder: str) -> int:
    """Bytes of every file below ``folder`` (what the commit manifest records for a folder)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def _process_group() -> bool:
    """Whether this process is in an initialized default process group (of any size)."""
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def _remove(target: str) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(target)


def _failure(exc: BaseException, what: str, path: str, kind: type[CheckpointError]) -> BaseException:
    """A ckpthooks error for a failed DCP call (DCP raises ``CheckpointException``, a
    ``BaseException`` carrying every failed rank's exception, on every rank)."""
    failures: dict[int, Any] = dict(getattr(exc, "failures", None) or {})
    if not failures:
        return exc if isinstance(exc, CheckpointError) else kind(f"could not {what} {path}: {exc}")
    mine = failures.get(_rank())
    if mine is not None and isinstance(mine[0], CheckpointError):
        return mine[0]  # this rank's own error, as raised (an UnsafeCheckpointError, ...)
    rank, (first, _trace) = min(failures.items(), key=lambda item: item[0])
    return kind(f"could not {what} {path}: failed on rank {rank} ({type(first).__name__}: {first})")


class DCPCheckpointIO(CheckpointIO):
    """Checkpoints as ``torch.distributed.checkpoint`` folders, written by every rank.

    Args:
        thread_count: threads each rank writes its files with (DCP's ``FileSystemWriter``).
        sync_files: fsync every file before the checkpoint is committed (keep it on: without it a
            crash can leave a committed folder with missing bytes).
        checksum_algorithm: what every file is hashed with while it is written (default: the
            fastest available, ``xxh3_64``); the manifest records the folder's checksum as
            ``<algorithm>/files`` (see :mod:`ckpthooks_dcp.checksums`), which loading and
            ``ckpthooks verify`` check.
    """

    #: every rank calls save_checkpoint and load_checkpoint (see :class:`ckpthooks.CheckpointIO`)
    collective = True

    def __init__(self, thread_count: int = 1, sync_files: bool = True, checksum_algorithm: str | None = None) -> None:
        self.thread_count = thread_count
        self.sync_files = sync_files
        self.checksum_algorithm, _ = new_hasher(checksum_algorithm)  # an unknown name fails here

    # ------------------------------------------------------------------ save
    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SaveResult | None:
        from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
        from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemWriter
        from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

        writer_rank = _rank() == 0
        tensors, structure = split(checkpoint)
        # rank 0 writes what every rank holds whole; each rank writes its own shards
        state: dict[str, Any] = {name: t for name, t in tensors.items() if writer_rank or is_dtensor(t)}
        if writer_rank:
            state[STRUCTURE_KEY] = structure
        if not is_local(path):
            return self._save_remote(state, path, storage_options)
        local = local_folder(path)
        fresh = broadcast_object(temp_name_for(local) if writer_rank else None)
        storage_writer = FileSystemWriter(fresh, sync_files=self.sync_files, thread_count=self.thread_count)
        recording = None
        if isinstance(getattr(storage_writer, "fs", None), FileSystem):  # DCP writes through it
            recording = storage_writer.fs = hashing_file_system(self.checksum_algorithm)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
                dcp_save(
                    state,
                    storage_writer=storage_writer,
                    planner=DefaultSavePlanner(flatten_state_dict=False, flatten_sharded_tensors=False),
                    no_dist=_world_size() == 1,
                )
            # every rank's files, with their checksums, to rank 0 (a collective: every rank is here)
            gathered = all_gather_object(
                relative_records(recording.records, fresh) if recording is not None else {}
            )
        except BaseException as exc:
            if writer_rank:  # DCP raised on every rank after its last collective: nobody writes now
                with contextlib.suppress(OSError):
                    _remove(fresh)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _failure(exc, "write", path, StorageError) from exc
        if not writer_rank:
            return None
        try:
            size, checksum = folder_checksum(fresh, gathered, self.checksum_algorithm)
            self._publish(fresh, local)
        except OSError as exc:
            with contextlib.suppress(OSError):
                _remove(fresh)
            raise StorageError(f"could not write {path}: {exc.strerror or exc}") from exc
        return SaveResult(size=size, checksum=checksum, algorithm=folder_algorithm(self.checksum_algorithm))

    def _save_remote(
        self, state: dict[str, Any], path: str, storage_options: Mapping[str, Any] | None
    ) -> SaveResult | None:
        """Every rank streams its files to the object store under ``path`` itself (no rename
        there: the runtime wrote the pending marker and cleared ``path`` first, and commits with
        the manifest once every rank succeeded); rank 0 combines every rank's checksums."""
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
        from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
        from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

        options = dict(storage_options or {})
        fs = filesystem(path, options)
        writer_rank = _rank() == 0
        # S3 and the like make an object durable when its upload completes: no fsync to ask for
        storage_writer = FsspecWriter(path, sync_files=False, thread_count=self.thread_count, **options)
        recording = hashing_fsspec_file_system(self.checksum_algorithm, fs)
        storage_writer.fs = recording
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
                dcp_save(
                    state,
                    storage_writer=storage_writer,
                    planner=DefaultSavePlanner(flatten_state_dict=False, flatten_sharded_tensors=False),
                    no_dist=_world_size() == 1,
                )
            gathered = all_gather_object(relative_urls(recording.records, path))
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _failure(exc, "write", path, StorageError) from exc
        if not writer_rank:
            return None
        try:
            size, checksum = stored_folder_checksum(fs, fs_path(fs, path), gathered, self.checksum_algorithm)
        except OSError as exc:
            raise StorageError(f"could not read back {path}: {exc}") from exc
        return SaveResult(size=size, checksum=checksum, algorithm=folder_algorithm(self.checksum_algorithm))

    @staticmethod
    def _publish(fresh: str, local: str) -> None:
        """Rename the complete folder ``fresh`` to ``local`` (rank 0, after every rank finished)."""
        fsync_dir(fresh)
        parent = os.path.dirname(os.path.abspath(local))
        aside = None
        if os.path.lexists(local):
            # an uncommitted leftover (the runtime keeps a committed one aside before the write)
            aside = temp_name_for(local)
            os.rename(local, aside)
        os.rename(fresh, local)
        fsync_dir(parent)
        if aside is not None:
            try:
                _remove(aside)
            except OSError as exc:  # the next start removes it (its name marks it as ours)
                log.warning("could not remove %s: %s", aside, exc)

    # ------------------------------------------------------------------ load
    def load_checkpoint(
        self,
        path: str,
        map_location: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        import torch
        from torch.distributed.checkpoint.metadata import BytesStorageMetadata
        from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

        if is_local(path):
            local = local_folder(path)
            if not os.path.isdir(local):
                if os.path.exists(local):
                    raise CorruptCheckpointError(
                        f"{path} is a file, not a torch.distributed.checkpoint folder; load it with the "
                        "default backend (leave checkpoint_io= out)"
                    )
                raise CheckpointNotFoundError(f"no checkpoint at {path}")
            metadata = read_metadata(local)
            reader = _restricted_reader(local)
        else:
            metadata, reader = _remote_reader(path, storage_options)
        entries = metadata.state_dict_metadata
        if STRUCTURE_KEY not in entries:
            raise CorruptCheckpointError(
                f"{path} is a torch.distributed.checkpoint folder, but not one ckpthooks wrote (it has "
                f"no {STRUCTURE_KEY!r} entry); load it with torch.distributed.checkpoint.load, or "
                "convert it with torch.distributed.checkpoint.format_utils.dcp_to_torch_save"
            )
        checkpointer = restoring_checkpointer()
        collective = checkpointer is not None and _world_size() > 1
        # DTensor destinations wherever the live state has DTensors: also on a process group of
        # one rank (FSDP2 over a single rank loading what several ranks saved)
        sharded = checkpointer is not None and _process_group()
        templates = _live_templates(checkpointer) if sharded else {}
        device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
        destination: dict[str, Any] = {}
        for name, entry in entries.items():
            if isinstance(entry, BytesStorageMetadata):
                destination[name] = None  # filled by the planner's load_bytes
                continue
            size, dtype = tuple(entry.size), entry.properties.dtype
            template = templates.get(name)
            if template is None:
                template = _optimizer_state_template(checkpointer, name, size) if sharded else None
            if template is not None and tuple(template.shape) == size:
                destination[name] = torch.empty_like(template, dtype=dtype)
            else:
                destination[name] = torch.empty(size, dtype=dtype, device=device)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
                dcp_load(
                    destination,
                    storage_reader=reader,
                    planner=_planner(weights_only, path),
                    no_dist=not collective,
                )
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise _failure(exc, "read", path, CorruptCheckpointError) from exc
        structure = destination.pop(STRUCTURE_KEY)
        if not isinstance(structure, dict) or "checkpoint" not in structure:
            raise CorruptCheckpointError(f"{path}: the {STRUCTURE_KEY!r} entry is not a ckpthooks structure")
        try:
            loaded = join(structure["checkpoint"], destination)
        except KeyError as exc:
            raise CorruptCheckpointError(f"{path} lacks the tensor {exc.args[0]!r} its structure names") from exc
        if not isinstance(loaded, dict):
            raise CorruptCheckpointError(f"{path} holds a {type(loaded).__name__}, not a checkpoint dict")
        return loaded

    # ------------------------------------------------------------------ remove
    def remove_checkpoint(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        if not is_local(path):
            fs = filesystem(path, dict(storage_options or {}))
            stripped = fs_path(fs, path)
            try:
                if fs.exists(stripped):
                    fs.rm(stripped, recursive=True)
            except OSError as exc:
                raise StorageError(f"could not delete {path}: {exc}") from exc
            return
        local = local_folder(path)
        try:
            _remove(local)
        except OSError as exc:
            raise StorageError(f"could not delete {path}: {exc.strerror or exc}") from exc


def _live_templates(checkpointer: Any) -> dict[str, Any]:
    """The ``DTensor`` of the live state, by entry name: what the tracked model, optimizers and
    other components would save now. Their placements decide which shards this rank reads."""
    live: dict[str, Any] = {}
    for component in checkpointer.components:
        try:
            if component.is_active(checkpointer):
                component.save_into(checkpointer, live)
        except Exception as exc:  # only placements are wanted; the restore reports real problems
            log.debug("no placements from component %r: %s", getattr(component, "name", component), exc)
    tensors, _structure = split(live)
    return {name: tensor for name, tensor in tensors.items() if is_dtensor(tensor)}


def _optimizer_state_template(checkpointer: Any, name: str, size: tuple[int, ...]) -> Any | None:
    """For ``optimizer_states.<k>.state.<i>.<key>``: parameter ``i`` of optimizer ``k`` when it is a
    ``DTensor`` of that size. An optimizer that has not stepped yet has no state to take placements
    from; its state is sharded like its parameters."""
    parts = name.split(".", 4)
    if len(parts) < 5 or parts[0] != "optimizer_states" or parts[2] != "state":
        return None
    if not (parts[1].isdigit() and parts[3].isdigit()):
        return None
    optimizers = list(getattr(checkpointer, "optimizers", []) or [])
    k, i = int(parts[1]), int(parts[3])
    if k >= len(optimizers):
        return None
    params = [p for group in optimizers[k].param_groups for p in group["params"]]
    if i >= len(params) or not is_dtensor(params[i]) or tuple(params[i].shape) != size:
        return None
    return params[i]


def _planner(weights_only: bool, path: str) -> Any:
    import torch
    from ckpthooks.plugin import translate_load_error
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _Planner(DefaultLoadPlanner):
        """DCP's default load planner, except that non-tensor entries load with
        ``torch.load(weights_only=...)`` (DCP's own uses ``weights_only=False``)."""

        def load_bytes(self, read_item: Any, value: Any) -> None:
            try:
                loaded = torch.load(value, weights_only=weights_only)
            except Exception as exc:
                translated = translate_load_error(exc, path)
                if translated is not None:
                    raise translated from exc
                raise
            self.state_dict[read_item.dest_index.fqn] = loaded
            self.original_state_dict[read_item.dest_index.fqn] = loaded

    # flat names, no ShardedTensor: the planner fills the very dict handed to dcp.load
    return _Planner(flatten_state_dict=False, flatten_sharded_tensors=False)


def _remote_reader(path: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """The metadata of the DCP folder at the URL ``path`` (read with the restricted unpickler) and
    an ``FsspecReader`` that hands DCP the same metadata."""
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    options = dict(storage_options or {})
    fs = filesystem(path, options)
    index = fs_path(fs, path).rstrip("/") + "/" + METADATA_FILE
    try:
        data = fs.cat_file(index)
    except FileNotFoundError as exc:
        if fs.isfile(fs_path(fs, path)):
            raise CorruptCheckpointError(
                f"{path} is a file, not a torch.distributed.checkpoint folder; load it with the "
                "default backend (leave checkpoint_io= out)"
            ) from exc
        if fs.exists(fs_path(fs, path)):
            raise CorruptCheckpointError(
                f"{path} has no {METADATA_FILE}: it is not a complete torch.distributed.checkpoint folder"
            ) from exc
        raise CheckpointNotFoundError(f"no checkpoint at {path}") from exc
    metadata = loads_metadata(data, source=f"{path}/{METADATA_FILE}")

    class Reader(FsspecReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return metadata, Reader(path, **options)


def _restricted_reader(folder: str) -> Any:
    """A ``FileSystemReader`` whose ``read_metadata`` uses the restricted unpickler."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_metadata(folder)
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(folder)
