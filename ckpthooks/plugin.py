"""The public API for plugin authors: everything a plugin package needs from ckpthooks.

A plugin (a package under ``plugins/``, ``examples/`` or anyone's) imports only :mod:`ckpthooks`,
:mod:`ckpthooks.plugin` and :mod:`ckpthooks.testing`; every other module of ckpthooks is internal and
may change in any release. The names below are versioned with ckpthooks: pin a compatible range
(``ckpthooks>=0.1.0.dev0,<0.2``) in your package's dependencies.

``import ckpthooks.plugin`` is cheap, like ``import ckpthooks``: it imports neither torch nor the
plugin host; each name is imported on first use. The list is generated into the hook reference page
(docs/hooks.md) from :data:`__all__` and :data:`DOCUMENTATION`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckpthooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from ckpthooks._catalog import read_manifest, verify_checkpoint
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._components import Found
    from ckpthooks._distributed import (
        DistributedContext,
        agree_on_call,
        agree_on_outcome,
        all_gather_object,
        barrier,
        broadcast_object,
        decide_on_rank_zero,
        global_rank,
        is_global_zero,
        rank_zero_only,
        reset_collective_steps,
        world_size,
    )
    from ckpthooks._io.base import CheckpointIO, CheckpointIOSpec, SaveResult, restoring_checkpointer
    from ckpthooks._io.durable import (
        TEMP_MARKER,
        atomic_write,
        fsync_dir,
        is_temp_name,
        storage_error,
        temp_name_for,
    )
    from ckpthooks._io.hashing import (
        Hasher,
        HashingWriter,
        available_algorithms,
        default_algorithm,
        folder_algorithm,
        folder_digest,
        folder_files,
        hash_local_file,
        hash_local_folder,
        hash_stored_file,
        hash_stored_folder,
        new_hasher,
        stored_folder_files,
    )
    from ckpthooks._io.location import Location
    from ckpthooks._io.paths import filesystem, fs_path, is_local, local_path, protocol_of
    from ckpthooks._io.paths import join as join_path
    from ckpthooks._io.paths import normalize as normalize_path
    from ckpthooks._io.retry import RetryPolicy, call_with_retry, get_default_retry, is_transient, set_default_retry
    from ckpthooks._io.safety import check_weights_only_safe, translate_load_error
    from ckpthooks._io.torch_io import TorchCheckpointIO
    from ckpthooks._io.writing import write_durably
    from ckpthooks._manifest import MANIFEST_SUFFIX, Manifest, manifest_path
    from ckpthooks._plugin_host import PluginHost, PluginInfo, get_plugin_host, set_plugin_host
    from ckpthooks.cli import main as cli_main

#: name -> (module it lives in today, attribute there, one line for the reference page)
DOCUMENTATION: dict[str, tuple[str, str, str]] = {
    # hooks and the host
    "hookimpl": (
        "ckpthooks.hookspecs",
        "hookimpl",
        "Marks a function or method as a ckpthooks hook implementation.",
    ),
    "PluginHost": (
        "ckpthooks._plugin_host",
        "PluginHost",
        "The plugin manager; build one in tests to register a plugin by hand.",
    ),
    "PluginInfo": (
        "ckpthooks._plugin_host",
        "PluginInfo",
        "What `ckpthooks plugins` reports about one plugin (name, source, version, hooks, error).",
    ),
    "get_plugin_host": (
        "ckpthooks._plugin_host",
        "get_plugin_host",
        "The shared plugin host, built on first use.",
    ),
    "set_plugin_host": (
        "ckpthooks._plugin_host",
        "set_plugin_host",
        "Replace the shared host (`None` rebuilds it next time); returns the previous one.",
    ),
    # state components
    "Found": (
        "ckpthooks._components",
        "Found",
        "What a state component's `find` returns: `Found(value)`, or `Found()` when the checkpoint has none.",
    ),
    # locations
    "Location": (
        "ckpthooks._io.location",
        "Location",
        "A path or URL resolved once: its filesystem, `os_path`, `renames_atomically`, `hard_links`, "
        "bounded reads, atomic replace, listing.",
    ),
    # format backends
    "CheckpointIO": (
        "ckpthooks._io.base",
        "CheckpointIO",
        "Base class of a format backend (Lightning-compatible "
        "`save_checkpoint`/`load_checkpoint`/`remove_checkpoint`).",
    ),
    "CheckpointIOSpec": (
        "ckpthooks._io.base",
        "CheckpointIOSpec",
        "A named backend contribution: `name`, `protocols`, `factory`, `priority`, `description`.",
    ),
    "SaveResult": (
        "ckpthooks._io.base",
        "SaveResult",
        "What a backend's save returns: the size and checksum of the bytes written.",
    ),
    "TorchCheckpointIO": (
        "ckpthooks._io.torch_io",
        "TorchCheckpointIO",
        "The default backend (torch.save over fsspec), to subclass or wrap.",
    ),
    "Checkpointer": (
        "ckpthooks._checkpointer",
        "Checkpointer",
        "The runtime, as hooks receive it (type annotations, `isinstance`).",
    ),
    "restoring_checkpointer": (
        "ckpthooks._io.base",
        "restoring_checkpointer",
        "The checkpointer restoring right now in this thread, else `None` (for backends that load into live objects).",
    ),
    # durable writes and temporary names
    "write_durably": (
        "ckpthooks._io.writing",
        "write_durably",
        "Write a file the way ckpthooks does: temporary sibling, fsync, rename locally; streamed, retried"
        " upload remotely; returns a SaveResult.",
    ),
    "atomic_write": (
        "ckpthooks._io.durable",
        "atomic_write",
        "Context manager: a local file handle whose bytes replace `path` atomically (and durably) on success.",
    ),
    "fsync_dir": (
        "ckpthooks._io.durable",
        "fsync_dir",
        "fsync a local folder, so that a rename or create in it survives a crash.",
    ),
    "temp_name_for": (
        "ckpthooks._io.durable",
        "temp_name_for",
        "The temporary sibling name to write before renaming over `path` (leftover cleanup recognises it).",
    ),
    "is_temp_name": (
        "ckpthooks._io.durable",
        "is_temp_name",
        "Whether a file name is a ckpthooks temporary (from `temp_name_for`).",
    ),
    "TEMP_MARKER": (
        "ckpthooks._io.durable",
        "TEMP_MARKER",
        "The marker every temporary name contains.",
    ),
    "storage_error": (
        "ckpthooks._io.durable",
        "storage_error",
        "Build a StorageError for a failed `action` on `path` from an OSError, with a hint (permissions, disk full).",
    ),
    # locations
    "protocol_of": (
        "ckpthooks._io.paths",
        "protocol_of",
        "The fsspec protocol of a path or URL (`file` for local paths).",
    ),
    "is_local": (
        "ckpthooks._io.paths",
        "is_local",
        "Whether a path or URL is on the local filesystem.",
    ),
    "local_path": (
        "ckpthooks._io.paths",
        "local_path",
        "The plain OS path of a local path or `file://` URL.",
    ),
    "filesystem": (
        "ckpthooks._io.paths",
        "filesystem",
        "The fsspec filesystem serving a path or URL (with `storage_options`).",
    ),
    "fs_path": (
        "ckpthooks._io.paths",
        "fs_path",
        "A URL as its filesystem names it (protocol stripped).",
    ),
    "join_path": (
        "ckpthooks._io.paths",
        "join",
        "Join a base path or URL and name parts with `/`.",
    ),
    "normalize_path": (
        "ckpthooks._io.paths",
        "normalize",
        "A path or URL in the form ckpthooks compares and records.",
    ),
    # hashing
    "new_hasher": (
        "ckpthooks._io.hashing",
        "new_hasher",
        "`(algorithm, hasher)` for the given or default checksum algorithm.",
    ),
    "Hasher": (
        "ckpthooks._io.hashing",
        "Hasher",
        "Protocol of a hasher (`update`, `hexdigest`).",
    ),
    "HashingWriter": (
        "ckpthooks._io.hashing",
        "HashingWriter",
        "A writable file wrapper that hashes and counts what passes through it.",
    ),
    "hash_local_file": (
        "ckpthooks._io.hashing",
        "hash_local_file",
        "`(size, digest)` of a local file.",
    ),
    "hash_local_folder": (
        "ckpthooks._io.hashing",
        "hash_local_folder",
        "`(size, digest)` of a local folder checkpoint (every file, by relative name).",
    ),
    "folder_files": (
        "ckpthooks._io.hashing",
        "folder_files",
        "The files of a local folder checkpoint, by relative name, in hashing order.",
    ),
    "stored_folder_files": (
        "ckpthooks._io.hashing",
        "stored_folder_files",
        "`{relative name: size}` of the files below a folder on any fsspec filesystem (an object store's prefix).",
    ),
    "hash_stored_file": (
        "ckpthooks._io.hashing",
        "hash_stored_file",
        "`(size, digest)` of one file on any fsspec filesystem, streamed.",
    ),
    "hash_stored_folder": (
        "ckpthooks._io.hashing",
        "hash_stored_folder",
        "`(size, digest)` of a folder checkpoint on any fsspec filesystem (every file, by relative name).",
    ),
    "folder_algorithm": (
        "ckpthooks._io.hashing",
        "folder_algorithm",
        "The manifest algorithm name of a folder checksum built from file checksums.",
    ),
    "folder_digest": (
        "ckpthooks._io.hashing",
        "folder_digest",
        "Combine per-file `(size, digest)` records into a folder's `(size, digest)`.",
    ),
    "default_algorithm": (
        "ckpthooks._io.hashing",
        "default_algorithm",
        "The checksum algorithm ckpthooks uses by default here (xxh3 if installed, else crc32).",
    ),
    "available_algorithms": (
        "ckpthooks._io.hashing",
        "available_algorithms",
        "The checksum algorithms available in this environment.",
    ),
    # loading safely
    "translate_load_error": (
        "ckpthooks._io.safety",
        "translate_load_error",
        "Turn a torch weights-only load failure into UnsafeCheckpointError naming the offending global (or `None`).",
    ),
    "check_weights_only_safe": (
        "ckpthooks._io.safety",
        "check_weights_only_safe",
        "Raise UnsafeStateError if a value holds anything a weights-only load would refuse.",
    ),
    # retries
    "RetryPolicy": (
        "ckpthooks._io.retry",
        "RetryPolicy",
        "How often and how long remote operations are retried.",
    ),
    "call_with_retry": (
        "ckpthooks._io.retry",
        "call_with_retry",
        "Run an operation, repeating it on transient storage errors; raises StorageError when exhausted.",
    ),
    "is_transient": (
        "ckpthooks._io.retry",
        "is_transient",
        "Whether an exception is a transient storage failure worth retrying.",
    ),
    "get_default_retry": (
        "ckpthooks._io.retry",
        "get_default_retry",
        "The process-wide default RetryPolicy.",
    ),
    "set_default_retry": (
        "ckpthooks._io.retry",
        "set_default_retry",
        "Replace the default RetryPolicy; returns the previous one.",
    ),
    # manifests (reading and verifying what was committed)
    "Manifest": (
        "ckpthooks._manifest",
        "Manifest",
        "The record committed next to each checkpoint (size, checksum, step, metrics, plugins).",
    ),
    "MANIFEST_SUFFIX": (
        "ckpthooks._manifest",
        "MANIFEST_SUFFIX",
        "The suffix of a checkpoint's manifest file name.",
    ),
    "manifest_path": (
        "ckpthooks._manifest",
        "manifest_path",
        "The manifest path of a checkpoint path.",
    ),
    "read_manifest": (
        "ckpthooks._catalog",
        "read_manifest",
        "A checkpoint's Manifest, or `None` when it has none.",
    ),
    "verify_checkpoint": (
        "ckpthooks._catalog",
        "verify_checkpoint",
        "Check a checkpoint's bytes against its manifest; raises CorruptCheckpointError.",
    ),
    # the distributed context and collectives
    "DistributedContext": (
        "ckpthooks._distributed",
        "DistributedContext",
        "Protocol a `distributed_context` hook returns for a runtime other than torch.distributed.",
    ),
    "global_rank": (
        "ckpthooks._distributed",
        "global_rank",
        "This process's global rank (process group, plugin context, or launcher variables).",
    ),
    "world_size": (
        "ckpthooks._distributed",
        "world_size",
        "The number of processes in the run.",
    ),
    "is_global_zero": (
        "ckpthooks._distributed",
        "is_global_zero",
        "Whether this process is rank 0 (the writer).",
    ),
    "barrier": (
        "ckpthooks._distributed",
        "barrier",
        "Wait for every rank (a no-op in one process).",
    ),
    "broadcast_object": (
        "ckpthooks._distributed",
        "broadcast_object",
        "Rank `src`'s picklable object on every rank.",
    ),
    "all_gather_object": (
        "ckpthooks._distributed",
        "all_gather_object",
        "Every rank's picklable object, in rank order, on every rank.",
    ),
    "agree_on_call": (
        "ckpthooks._distributed",
        "agree_on_call",
        "Check that every rank makes the same call at the same point.",
    ),
    "agree_on_outcome": (
        "ckpthooks._distributed",
        "agree_on_outcome",
        "Share each rank's outcome; every rank raises if one failed.",
    ),
    "decide_on_rank_zero": (
        "ckpthooks._distributed",
        "decide_on_rank_zero",
        "Run a decision on rank 0 and return it on every rank.",
    ),
    "rank_zero_only": (
        "ckpthooks._distributed",
        "rank_zero_only",
        "Decorator: run a function on rank 0 only.",
    ),
    "reset_collective_steps": (
        "ckpthooks._distributed",
        "reset_collective_steps",
        "Forget the exchange counts, as a fresh process would (tests running ranks as threads).",
    ),
    # testing contributed CLI commands
    "cli_main": (
        "ckpthooks.cli",
        "main",
        "The `ckpthooks` click group, to invoke contributed commands with click's CliRunner.",
    ),
}

__all__ = [
    "MANIFEST_SUFFIX",
    "TEMP_MARKER",
    "CheckpointIO",
    "CheckpointIOSpec",
    "Checkpointer",
    "DistributedContext",
    "Found",
    "Hasher",
    "HashingWriter",
    "Location",
    "Manifest",
    "PluginHost",
    "PluginInfo",
    "RetryPolicy",
    "SaveResult",
    "TorchCheckpointIO",
    "agree_on_call",
    "agree_on_outcome",
    "all_gather_object",
    "atomic_write",
    "available_algorithms",
    "barrier",
    "broadcast_object",
    "call_with_retry",
    "check_weights_only_safe",
    "cli_main",
    "decide_on_rank_zero",
    "default_algorithm",
    "filesystem",
    "folder_algorithm",
    "folder_digest",
    "folder_files",
    "fs_path",
    "fsync_dir",
    "get_default_retry",
    "get_plugin_host",
    "global_rank",
    "hash_local_file",
    "hash_local_folder",
    "hash_stored_file",
    "hash_stored_folder",
    "hookimpl",
    "is_global_zero",
    "is_local",
    "is_temp_name",
    "is_transient",
    "join_path",
    "local_path",
    "manifest_path",
    "new_hasher",
    "normalize_path",
    "protocol_of",
    "rank_zero_only",
    "read_manifest",
    "reset_collective_steps",
    "restoring_checkpointer",
    "set_default_retry",
    "set_plugin_host",
    "storage_error",
    "stored_folder_files",
    "temp_name_for",
    "translate_load_error",
    "verify_checkpoint",
    "world_size",
    "write_durably",
]


def __getattr__(name: str) -> Any:
    entry = DOCUMENTATION.get(name)
    if entry is None:
        raise AttributeError(f"module 'ckpthooks.plugin' has no attribute {name!r}")
    module, attribute, _ = entry
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
