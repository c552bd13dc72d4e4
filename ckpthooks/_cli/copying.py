"""``ckpthooks copy``, and the byte-for-byte transfer with commit that ``convert`` uses too.

Bytes stream from the source to the destination (local disk, ``s3://``, any fsspec filesystem),
with the checksum computed on the way, written through the destination's backend and committed by
:meth:`ckpthooks._store.CheckpointStore.commit_stream`, the commit protocol of every save: an
overwritten checkpoint kept as its previous version until the copy is committed, remote objects
behind a pending marker, the manifest written last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ckpthooks._cli.common import (
    EXIT_FAILURE,
    Progress,
    describe_error,
    echo,
    emit_json,
    error,
    human_size,
    json_option,
    parse_storage_options,
    progress_option,
)

if TYPE_CHECKING:
    from ckpthooks._io.base import CheckpointIO, SaveResult
    from ckpthooks._io.hashing import HashingWriter
    from ckpthooks._manifest import Manifest
    from ckpthooks._store import CheckpointStore


def destination_free(dst: str, options: dict[str, Any] | None, overwrite: bool, *, uncommit: bool = False) -> None:
    """Refuse an existing destination unless ``overwrite``. A commit at ``dst`` keeps the old
    version until the new one is committed; a file that will not be committed (a safetensors
    weights file) passes ``uncommit`` to uncommit a checkpoint it replaces first."""
    from ckpthooks._catalog import remove_manifest
    from ckpthooks._io import paths
    from ckpthooks.exceptions import DestinationExistsError

    fs = paths.filesystem(dst, options)
    if not fs.exists(paths.fs_path(fs, dst)):
        return
    if not overwrite:
        raise DestinationExistsError(f"{dst} exists already; pass --overwrite to replace it")
    if uncommit:
        remove_manifest(dst, options)


def destination_store(options: dict[str, Any] | None) -> CheckpointStore:
    """The store that commits at the destination, with the plugin backends and storage hooks."""
    from ckpthooks._cli.common import plugin_host
    from ckpthooks._store import CheckpointStore

    return CheckpointStore(host=plugin_host(), storage_options=options)


def stream(
    src: str,
    dst: str,
    store: CheckpointStore,
    io: CheckpointIO,
    src_options: dict[str, Any] | None,
    *,
    algorithm: str | None,
    expected: str | None = None,
    expected_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SaveResult:
    """Write the bytes of ``src`` to ``dst`` durably, through the destination's backend
    (:meth:`CheckpointStore.write_bytes`). Bytes that do not match ``expected`` (a checksum of
    ``algorithm``) or ``expected_size`` are never published. Committing is the caller's
    (:meth:`CheckpointStore.commit_stream`)."""
    from ckpthooks._io import paths
    from ckpthooks._io.hashing import CHUNK
    from ckpthooks.exceptions import CorruptCheckpointError

    source_fs = paths.filesystem(src, src_options)

    def pump(writer: HashingWriter) -> None:
        with source_fs.open(paths.fs_path(source_fs, src), "rb") as handle:
            while chunk := handle.read(CHUNK):
                writer.write(chunk)
                if progress is not None:
                    progress(len(chunk))
        if expected_size is not None and writer.size != expected_size:
            raise CorruptCheckpointError(
                f"{src} has {writer.size} bytes but its manifest records {expected_size}: it was truncated "
                f"or replaced after it was committed; nothing was written to {dst}"
            )
        if expected is not None and writer.hexdigest() != expected:
            raise CorruptCheckpointError(
                f"{src} fails its {writer.algorithm} checksum while being copied (read {writer.hexdigest()}, "
                f"manifest {expected}): its bytes changed after it was committed; nothing was written to {dst}"
            )

    return store.write_bytes(io, dst, pump, checksum_algorithm=algorithm)


def stream_folder(
    src: str,
    dst: str,
    store: CheckpointStore,
    io: CheckpointIO,
    src_options: dict[str, Any] | None,
    *,
    algorithm: str | None,
    expected: str | None = None,
    expected_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SaveResult:
    """Copy a folder checkpoint (a sharded one) file by file, hashing every file on the way; a
    folder whose checksum (see :func:`ckpthooks._io.hashing.folder_digest`) or size does not match
    ``expected`` / ``expected_size`` is never published. A local destination is written as a
    temporary sibling folder and renamed into place; on object storage the files are written
    (behind the commit's pending marker) and deleted again when the check fails."""
    from ckpthooks._io import paths
    from ckpthooks._io.base import SaveResult
    from ckpthooks._io.durable import temp_name_for
    from ckpthooks._io.hashing import default_algorithm, folder_algorithm, folder_base, folder_digest
    from ckpthooks._io.location import Location
    from ckpthooks.exceptions import CorruptCheckpointError

    dst_options = store.storage_options
    base = (folder_base(algorithm) if algorithm else None) or default_algorithm()
    source_fs = paths.filesystem(src, src_options)
    root = paths.fs_path(source_fs, src).rstrip("/")
    names = sorted(name[len(root) + 1 :] for name in source_fs.find(root) if name.startswith(root + "/"))
    files: dict[str, tuple[int, str]] = {}

    def copy_files(into: str) -> None:
        for name in names:
            result = stream(
                paths.join(src, *name.split("/")), paths.join(into, *name.split("/")), store, io, src_options,
                algorithm=base, progress=progress,
            )  # fmt: skip
            files[name] = (result.size, str(result.checksum))

    def check() -> tuple[int, str]:
        size, digest = folder_digest(files, base)
        if expected_size is not None and size != expected_size:
            raise CorruptCheckpointError(
                f"{src} has {size} bytes but its manifest records {expected_size}: it was changed after it "
                f"was committed; nothing was published at {dst}"
            )
        if expected is not None and digest != expected:
            raise CorruptCheckpointError(
                f"{src} fails its {algorithm} checksum while being copied (read {digest}, manifest {expected}): "
                f"its files changed after it was committed; nothing was published at {dst}"
            )
        return size, digest

    target = Location.of(dst, dst_options)
    if target.renames_atomically:  # a fresh folder, renamed into place once it checks out
        target.make_parents()
        fresh = Location.of(temp_name_for(target.url), dst_options)
        aside = None
        try:
            copy_files(fresh.url)
            size, digest = check()
            fresh.sync_tree()
            if target.exists():
                aside = Location.of(temp_name_for(target.url), dst_options)
                target.rename_to(aside)
            fresh.rename_to(target)
        except BaseException:
            with contextlib.suppress(OSError):
                fresh.remove_tree()
            raise
        if aside is not None:
            with contextlib.suppress(OSError):
                aside.remove_tree()
    else:  # written in place, behind the commit's pending marker
        try:
            target.remove_tree()  # uncommitted by the commit already
            copy_files(dst)
            size, digest = check()
        except BaseException:
            target.remove_tree()
            raise
    return SaveResult(size=size, checksum=digest, algorithm=folder_algorithm(base))


@click.command("copy")
@click.argument("src")
@click.argument("dst")
@click.option("--overwrite", is_flag=True, help="Replace a checkpoint that exists at DST.")
@click.option("--src-option", "src_option_args", multiple=True, metavar="KEY=VALUE",
              help="An fsspec storage option for SRC (repeatable; JSON values as for verify -o).")
@click.option("--dst-option", "dst_option_args", multiple=True, metavar="KEY=VALUE",
              help="An fsspec storage option for DST (repeatable).")
@json_option
@progress_option
def copy_command(
    src: str,
    dst: str,
    overwrite: bool,
    src_option_args: tuple[str, ...],
    dst_option_args: tuple[str, ...],
    as_json: bool,
    progress: bool | None,
) -> None:  # fmt: skip
    """Copy a committed checkpoint, or every committed checkpoint under a folder, to DST and commit
    the copies there (for example from local disk to s3://).

    The bytes are checked against the source's manifest while they stream, so a source changed
    after its commit is never copied, and each copy gets its own manifest (same step, epoch,
    metrics and checksum) written last. A folder is copied with its layout below DST. A checkpoint
    that exists at DST is refused unless --overwrite.

    Exit codes: 0 when everything was copied, 1 when anything failed, 2 on bad usage.
    """
    from ckpthooks._catalog import iter_committed, read_manifest
    from ckpthooks._io import paths
    from ckpthooks.exceptions import CheckpointError, CheckpointNotFoundError

    src_options = parse_storage_options(src_option_args, "--src-option")
    dst_options = parse_storage_options(dst_option_args, "--dst-option")
    source = paths.normalize(src)
    target = paths.normalize(dst)
    pairs: list[tuple[str, str, Manifest]] = []
    try:
        manifest = read_manifest(source, src_options, strict=True)
        fs = paths.filesystem(source, src_options)
        if manifest is None and fs.isdir(paths.fs_path(fs, source)):
            for item in iter_committed(source, src_options):
                rel = item.path[len(source) :].lstrip("/\\").replace("\\", "/")
                pairs.append((item.path, paths.join(target, *rel.split("/")), item.manifest))
            if not pairs:
                raise CheckpointNotFoundError(f"no committed checkpoint under {src}")
        elif manifest is None:
            raise CheckpointNotFoundError(
                f"{src} is not a committed checkpoint (no valid manifest beside it); commit a Lightning "
                "or torch file with ckpthooks convert"
            )
        else:
            dst_fs = paths.filesystem(target, dst_options)
            into = dst.endswith(("/", os.sep)) or dst_fs.isdir(paths.fs_path(dst_fs, target))
            if into and read_manifest(target, dst_options) is None:  # not a folder checkpoint itself
                target = paths.join(target, paths.basename(source))
            pairs.append((source, target, manifest))
    except (CheckpointError, OSError) as exc:
        error(describe_error(exc))
        sys.exit(EXIT_FAILURE)
    results: list[dict[str, Any]] = []
    with Progress(sum(m.size for _, _, m in pairs), "copying", enabled=progress, as_json=as_json) as bar:
        for one_src, one_dst, one_manifest in pairs:
            record: dict[str, Any] = {"src": one_src, "dst": one_dst, "ok": True, "error": None}
            try:
                copy_committed(one_src, one_dst, one_manifest, src_options, dst_options, overwrite, bar.update)
                record["size"] = one_manifest.size
            except (CheckpointError, OSError) as exc:
                record.update(ok=False, error=describe_error(exc))
            results.append(record)
    if as_json:
        emit_json({"results": results})
    else:
        for record in results:
            if record["ok"]:
                echo(f"copied  {record['src']} -> {record['dst']} ({human_size(record['size'])})")
            else:
                echo(f"FAILED  {record['src']}: {record['error']}")
    if not all(record["ok"] for record in results):
        sys.exit(EXIT_FAILURE)


def check_algorithm(src: str, manifest: Manifest) -> None:
    """Raise :class:`~ckpthooks.IncompatibleFormatError` when this installation cannot compute the
    checksum algorithm ``manifest`` records (so the copy could not be checked against it)."""
    from ckpthooks._io.hashing import available_algorithms, folder_base, new_hasher
    from ckpthooks.exceptions import IncompatibleFormatError

    if not manifest.algorithm:
        return  # committed with its size only
    try:
        new_hasher(folder_base(manifest.algorithm) or manifest.algorithm)
    except LookupError as exc:
        if "pip install" in str(exc):  # a known algorithm whose package is missing
            hint = f"{exc}, then copy again"
        else:
            hint = (
                f"this ckpthooks knows {', '.join(available_algorithms())}: upgrade ckpthooks "
                "if a newer version wrote the manifest, or, if the manifest is damaged, "
                f"commit the file again with: ckpthooks convert {src} {src} --overwrite"
            )
        raise IncompatibleFormatError(
            f"the manifest of {src} records the checksum algorithm {manifest.algorithm!r}, which this "
            f"installation cannot compute, so the copy could not be checked and nothing was copied; {hint}"
        ) from exc


def copy_committed(
    src: str,
    dst: str,
    manifest: Manifest,
    src_options: dict[str, Any] | None,
    dst_options: dict[str, Any] | None,
    overwrite: bool,
    progress: Callable[[int], None] | None,
) -> Manifest:
    """Copy the committed checkpoint ``src`` to ``dst`` and commit it there through the store's
    streaming commit (an overwritten checkpoint stays committed as its previous version until the
    copy is)."""
    from ckpthooks._io import paths
    from ckpthooks._io.hashing import folder_base

    check_algorithm(src, manifest)  # before anything at dst changes
    destination_free(dst, dst_options, overwrite)
    store = destination_store(dst_options)
    source_fs = paths.filesystem(src, src_options)
    folder = (manifest.algorithm and folder_base(manifest.algorithm) is not None) or source_fs.isdir(
        paths.fs_path(source_fs, src)
    )

    def write(io: CheckpointIO) -> SaveResult:
        return (stream_folder if folder else stream)(
            src,
            dst,
            store,
            io,
            src_options,
            algorithm=manifest.algorithm,
            expected=manifest.checksum if manifest.algorithm else None,
            expected_size=manifest.size,
            progress=progress,
        )

    def manifest_for(result: SaveResult) -> Manifest:
        copied = dataclasses.replace(manifest, file=paths.basename(dst))
        if not manifest.checksum:  # committed with its size only: the copy has the checksum taken on the way
            copied = dataclasses.replace(copied, checksum=result.checksum, algorithm=result.algorithm)
        return copied

    return store.commit_stream(dst, write, manifest_for)
