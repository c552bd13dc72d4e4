"""``ckpthooks convert``: weights to and from safetensors, and Lightning or torch files into committed
ckpthooks checkpoints. Every source is loaded with ``torch.load(weights_only=True)`` (or read as
safetensors): converting never unpickles code."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import IO, Any

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
    plugin_host,
    printable,
    progress_option,
)
from ckpthooks._cli.scan import ScanError, sniff

_NO_SAFETENSORS = (
    "converting to or from safetensors needs the safetensors package: pip install safetensors "
    "(or the ckpthooks-safetensors plugin, plugins/ckpthooks-safetensors in the ckpthooks repository)"
)


class ConvertError(Exception):
    """The conversion cannot be done; the message says why and what to do."""


@click.command("convert")
@click.argument("src")
@click.argument("dst")
@click.option(
    "--to",
    "to",
    type=click.Choice(["safetensors", "ckpt"]),
    default=None,
    help="Output format. Default: safetensors when DST ends in .safetensors, else ckpt.",
)
@click.option(
    "--key",
    default=None,
    metavar="NAME",
    help="Where the weights are in SRC (a key of its top-level dict). Default: state_dict, or the whole "
    "file when it is a bare state dict.",
)
@click.option("--overwrite", is_flag=True, help="Replace a file that exists at DST.")
@click.option(
    "--adopt",
    is_flag=True,
    help="SRC was committed once but its bytes changed since (another program, such as Lightning's "
    "Trainer, wrote over it): ignore its stale manifest and commit the file as it is now. With SRC "
    "as DST, the file is committed in place.",
)
@json_option
@progress_option
def convert_command(
    src: str,
    dst: str,
    to: str | None,
    key: str | None,
    overwrite: bool,
    adopt: bool,
    as_json: bool,
    progress: bool | None,
) -> None:
    """Convert SRC into DST.

    \b
    * to safetensors (DST ends in .safetensors, or --to safetensors): the model weights of a
      ckpthooks, Lightning or torch.save file, as a standard safetensors file any safetensors
      reader loads (tensors that shared memory are stored separately).
    * from safetensors to .ckpt: the weights as a committed weights-only ckpthooks checkpoint in
      Lightning's layout (state_dict, epoch, global_step), with its manifest.
    * from a Lightning (or ckpthooks) .ckpt to .ckpt: after checking it loads with
      torch.load(weights_only=True), the file is copied byte for byte (or, when SRC is DST,
      left in place) and committed with a manifest: epoch and step from the file, metrics from
      its ModelCheckpoint state. A bare torch.save state dict is wrapped as state_dict.
      A committed SRC must match its manifest; --adopt commits one that another program
      replaced after its commit (``ckpthooks convert --adopt last.ckpt last.ckpt``).

    Local paths and fsspec URLs. Safetensors needs the safetensors package.

    Exit codes: 0 when DST was written, 1 when the conversion failed, 2 on bad usage.
    """
    from ckpthooks._io import paths
    from ckpthooks.exceptions import CheckpointError, CorruptCheckpointError

    source = paths.normalize(src)
    target = paths.normalize(dst)
    fmt = to or ("safetensors" if target.endswith(".safetensors") else "ckpt")
    try:
        if not overwrite and target != source:  # before anything is read (and torch imported)
            from ckpthooks._cli.copying import destination_free

            destination_free(target, None, overwrite)
        kind = _sniff(source)
        if fmt == "safetensors":
            if kind == "safetensors":
                raise ConvertError(f"{src} is a safetensors file already")
            report = _to_safetensors(source, target, key, overwrite, progress, as_json)
        elif kind == "safetensors":
            report = _from_safetensors(source, target, overwrite, progress, as_json)
        else:
            report = _commit_torch_file(source, target, key, overwrite, progress, as_json, adopt=adopt)
    except ConvertError as exc:
        error(str(exc))
        sys.exit(EXIT_FAILURE)
    except CorruptCheckpointError as exc:
        hint = ""
        if not adopt and fmt == "ckpt" and "after it was committed" in str(exc):
            hint = (
                f"; if another program wrote {src} on purpose, adopt the file as it is now: "
                f"ckpthooks convert --adopt {src} {dst}"
            )
        error(describe_error(exc) + hint)
        sys.exit(EXIT_FAILURE)
    except (CheckpointError, OSError) as exc:
        error(describe_error(exc))
        sys.exit(EXIT_FAILURE)
    if as_json:
        emit_json(report)
    else:
        echo(
            f"wrote {report['dst']} ({report['format']}, {report['tensors']} tensors, {human_size(report['size'])})"
            + ("; committed" if report.get("committed") else "")
        )


def _sniff(path: str) -> str:
    from ckpthooks._io.location import Location
    from ckpthooks.exceptions import CheckpointNotFoundError, ConfigurationError

    try:
        if Location.of(path).is_folder():
            raise ConfigurationError(
                f"{path} is a folder checkpoint (a sharded one, such as torch.distributed.checkpoint writes); "
                "ckpthooks convert reads single files. Restore it with Checkpointer.restore (its storage plugin, "
                "e.g. ckpthooks-dcp, reads it) and save the weights to one file, or copy it as it is with "
                "ckpthooks copy"
            )
        with _open_source(path) as handle:
            head = handle.read(16)
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(f"no file at {path}") from exc
    kind = sniff(head)
    if kind == "unknown":
        raise ConvertError(f"{path} is neither a torch.save file nor a safetensors file")
    return kind


def _open_source(path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    """``path`` open for reading; a local FIFO or device (a symlink to /dev/zero) raises
    :class:`~ckpthooks.CorruptCheckpointError` at once instead of blocking or reading forever."""
    from ckpthooks._io.location import Location

    return Location.of(path).open_read()


def _load_weights_only(path: str, *, adopt: bool = False) -> dict[str, Any]:
    """Through the storage hooks (plugin formats load too), verified against a manifest if there
    is one (unless ``adopt``: the manifest is stale and the file is taken as it is now)."""
    from ckpthooks._store import CheckpointStore

    return CheckpointStore(host=plugin_host()).load(
        path, map_location="cpu", weights_only=True, verify="off" if adopt else None
    )


def _weights(checkpoint: Any, key: str | None, src: str) -> dict[str, Any]:
    import torch

    def all_tensors(value: Any) -> bool:
        return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())

    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            raise ConvertError(f"{src} has no key {key!r}")
        found = checkpoint[key]
    elif isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        found = checkpoint["state_dict"]
    elif all_tensors(checkpoint):
        found = checkpoint
    else:
        keys = ", ".join(map(repr, list(checkpoint)[:12])) if isinstance(checkpoint, dict) else "none"
        raise ConvertError(
            f"{src} has no state_dict and is not a bare state dict (keys: {keys}); name the weights with --key"
        )
    if not all_tensors(found):
        raise ConvertError(f"the weights of {src} are not a dict of tensors")
    return {str(name): tensor for name, tensor in found.items()}


# --------------------------------------------------------------------------- to safetensors


def _to_safetensors(
    src: str, dst: str, key: str | None, overwrite: bool, progress: bool | None, as_json: bool
) -> dict[str, Any]:
    try:
        from safetensors.torch import save_file
    except ImportError as exc:
        raise ConvertError(_NO_SAFETENSORS) from exc
    import torch

    from ckpthooks._cli.copying import destination_free
    from ckpthooks._io import paths
    from ckpthooks._io.durable import temp_name_for
    from ckpthooks._io.location import Location
    from ckpthooks._io.writing import write_durably

    checkpoint = _load_weights_only(src)
    weights = _weights(checkpoint, key, src)
    total = sum(t.numel() * t.element_size() for t in weights.values())
    prepared: dict[str, Any] = {}
    seen: set[int] = set()
    with Progress(total, "preparing tensors", enabled=progress, as_json=as_json) as bar:
        for name, tensor in weights.items():
            data = tensor.detach().to("cpu")
            storage = data.untyped_storage().data_ptr()
            if storage in seen and data.numel():
                data = data.clone(memory_format=torch.contiguous_format)  # no shared memory in safetensors
            elif not data.is_contiguous():
                data = data.contiguous()
            seen.add(storage)
            prepared[name] = data
            bar.update(data.numel() * data.element_size())
    metadata = {"format": "pt", "ckpthooks.converted_from": printable(paths.basename(src))}
    for field in ("epoch", "global_step"):
        value = checkpoint.get(field) if isinstance(checkpoint, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            metadata[field] = str(value)
    dropped: list[str] = []
    for field in _CARRIED_FIELDS:  # as JSON text: safetensors metadata holds strings only
        value = checkpoint.get(field) if isinstance(checkpoint, dict) else None
        if value is None:
            continue
        try:
            metadata[f"ckpthooks.{field}"] = json.dumps(value)
        except (TypeError, ValueError):
            dropped.append(field)
            error(f"warning: {field} of {src} is not JSON (a class of its own?): not carried into {dst}")
    destination_free(dst, None, overwrite, uncommit=True)
    target = Location.of(dst)
    if target.os_path is not None:  # safetensors writes to a file name: a temporary sibling, renamed
        target.make_parents()
        tmp = Location.of(temp_name_for(target.url))
        try:
            save_file(prepared, tmp.local, metadata=metadata)
            with open(tmp.local, "rb") as handle:
                os.fsync(handle.fileno())
            tmp.rename_to(target)
        except BaseException:
            tmp.remove_tree()
            raise
        size = target.stored_size()
    else:  # the bytes in memory, streamed to the storage and retried like every checkpoint write
        from safetensors.torch import save

        data = save(prepared, metadata=metadata)
        size = write_durably(dst, lambda writer: writer.write(data)).size
    return {
        "src": src, "dst": dst, "format": "safetensors", "tensors": len(prepared), "size": size, "committed": False,
        "dropped": dropped,
    }  # fmt: skip


# --------------------------------------------------------------------------- from safetensors


def _from_safetensors(src: str, dst: str, overwrite: bool, progress: bool | None, as_json: bool) -> dict[str, Any]:
    from ckpthooks._cli.copying import destination_free
    from ckpthooks._cli.scan import scan_file
    from ckpthooks._io.location import Location

    source = Location.of(src)
    with _open_source(src) as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(0)
        try:
            scan = scan_file(handle, size)
        except ScanError as exc:
            raise _malformed(src, exc) from exc
    metadata = scan.safetensors_metadata or {}
    if metadata.get("ckpthooks.format") == "safetensors-checkpoint":
        # a whole checkpoint written by the ckpthooks-safetensors plugin: its load hook rebuilds it
        try:
            checkpoint = _load_weights_only(src)
        except Exception as exc:
            raise ConvertError(
                f"{src} is a ckpthooks-safetensors checkpoint; converting it needs that plugin installed "
                f"(plugins/ckpthooks-safetensors in the ckpthooks repository): {describe_error(exc)}"
            ) from exc
        destination_free(dst, None, overwrite)
        return _save(checkpoint, src, dst, weights_only=bool(checkpoint.get("ckpthooks", {}).get("weights_only")))
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as exc:
        raise ConvertError(_NO_SAFETENSORS) from exc
    weights: dict[str, Any] = {}
    with Progress(scan.size, "reading tensors", enabled=progress, as_json=as_json) as bar:
        try:
            if source.os_path is not None:  # safetensors opens a file name: memory-mapped
                with _open_source(src) as held, safe_open(_readable_name(src, held), "pt", device="cpu") as reader:
                    for name in reader.keys():  # noqa: SIM118 - safe_open is not a mapping
                        tensor = reader.get_tensor(name)
                        weights[name] = tensor
                        bar.update(tensor.numel() * tensor.element_size())
            else:
                from safetensors.torch import load

                with _open_source(src) as handle:
                    weights = load(handle.read())
                bar.update(scan.size)
        except SafetensorError as exc:
            raise _malformed(src, exc) from exc
    from ckpthooks._version import LIGHTNING_LAYOUT_VERSION

    checkpoint = {
        "epoch": _int(metadata.get("epoch")),
        "global_step": _int(metadata.get("global_step")),
        "pytorch-lightning_version": LIGHTNING_LAYOUT_VERSION,
        "state_dict": weights,
    }
    for field in _CARRIED_FIELDS:  # what a conversion to safetensors carried along
        text = metadata.get(f"ckpthooks.{field}")
        if text is not None:
            try:
                checkpoint[field] = json.loads(text)
            except ValueError:
                error(f"warning: the {field} in {src}'s metadata is not JSON: left out")
    destination_free(dst, None, overwrite)
    return _save(checkpoint, src, dst, weights_only=True)


#: Top-level fields a conversion to safetensors keeps in the file's metadata (as JSON) and a
#: conversion back restores: the model's and the datamodule's hyperparameters and their names.
_CARRIED_FIELDS = ("hyper_parameters", "hparams_name", "datamodule_hyper_parameters", "datamodule_hparams_name")


def _malformed(src: str, exc: BaseException) -> Exception:
    from ckpthooks.exceptions import CorruptCheckpointError

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CorruptCheckpointError(
        f"{src} is not a readable safetensors file ({text}); it may be truncated, altered or of another "
        "file type: convert an intact copy, or write the weights again with safetensors.torch.save_file"
    )


def _readable_name(src: str, held: IO[bytes]) -> str:
    """A name safetensors can open for the local file ``src``, open as ``held``: safetensors takes
    only UTF-8 paths, so a name with other bytes is opened through ``/proc/self/fd``, which names
    the very file held (where the OS offers it)."""
    from ckpthooks._io.location import Location

    local = Location.of(src).local
    pinned = f"/proc/self/fd/{held.fileno()}"
    try:
        local.encode("utf-8")
    except UnicodeEncodeError:
        if os.path.exists(pinned):
            return pinned
        raise ConvertError(
            f"{printable(src)}: the safetensors package opens only file names that are valid UTF-8; "
            "rename the file (or link it under a UTF-8 name) and convert that"
        ) from None
    return local


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else 0
    except ValueError:
        return 0


def _save(checkpoint: dict[str, Any], src: str, dst: str, *, weights_only: bool) -> dict[str, Any]:
    """Commit ``checkpoint`` at ``dst`` through the storage hooks, with the ckpthooks namespace."""
    from ckpthooks._components import namespace
    from ckpthooks._store import CheckpointStore
    from ckpthooks._version import FORMAT_VERSION, __version__

    host = plugin_host()
    space = namespace(checkpoint)
    space.setdefault("format_version", FORMAT_VERSION)
    space.setdefault("version", __version__)
    space.setdefault("plugins", host.plugin_versions())
    space.setdefault("weights_only", weights_only)
    manifest = CheckpointStore(host=host).save(
        checkpoint,
        dst,
        epoch=int(checkpoint.get("epoch") or 0),
        global_step=int(checkpoint.get("global_step") or 0),
        weights_only=weights_only,
    )
    return {
        "src": src,
        "dst": dst,
        "format": "ckpt",
        "tensors": _count_tensors(checkpoint),
        "size": manifest.size,
        "committed": True,
        "epoch": manifest.epoch,
        "global_step": manifest.global_step,
    }


def _count_tensors(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, dict):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_tensors(v) for v in value)
    return 0


# --------------------------------------------------------------------------- Lightning / torch -> ckpt


def _commit_torch_file(
    src: str, dst: str, key: str | None, overwrite: bool, progress: bool | None, as_json: bool, *, adopt: bool = False
) -> dict[str, Any]:
    from ckpthooks._catalog import read_manifest
    from ckpthooks._cli.copying import destination_free, destination_store, stream
    from ckpthooks._io import paths
    from ckpthooks._io.base import SaveResult
    from ckpthooks._io.location import Location
    from ckpthooks._manifest import Manifest

    checkpoint = _load_weights_only(src, adopt=adopt)  # refuses anything that would unpickle code
    if not isinstance(checkpoint, dict):
        raise ConvertError(f"{src} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    bare = "state_dict" not in checkpoint and key is None
    if key is not None or bare:
        wrapped = {
            "epoch": checkpoint.get("epoch", 0) if not bare else 0,
            "global_step": checkpoint.get("global_step", 0) if not bare else 0,
            "state_dict": _weights(checkpoint, key, src),
        }
        from ckpthooks._version import LIGHTNING_LAYOUT_VERSION

        wrapped["pytorch-lightning_version"] = LIGHTNING_LAYOUT_VERSION
        if src != dst:
            destination_free(dst, None, overwrite)
        return _save(wrapped, src, dst, weights_only=True)
    epoch, step = _int_field(checkpoint, "epoch"), _int_field(checkpoint, "global_step")
    weights_only = "optimizer_states" not in checkpoint
    metrics = _lightning_metrics(checkpoint)
    size = Location.of(src).stored_size()
    space = checkpoint.get("ckpthooks")
    recorded = space.get("plugins") if isinstance(space, dict) else None
    plugins = {str(k): None if v is None else str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}
    store = destination_store(None)
    with Progress(size, "committing", enabled=progress, as_json=as_json) as bar:
        if src == dst:
            if read_manifest(dst) is not None and not (overwrite or adopt):
                raise ConvertError(f"{dst} is committed already; pass --overwrite to commit it again")

            def write(io: Any) -> SaveResult:  # the bytes stay where they are: hash them
                from ckpthooks._io.hashing import hash_stream, read_chunks

                with _open_source(src) as handle:
                    written, digest = hash_stream(_counting(read_chunks(handle), bar.update), _algorithm())
                return SaveResult(size=written, checksum=digest, algorithm=_algorithm())
        else:
            destination_free(dst, None, overwrite)

            def write(io: Any) -> SaveResult:
                return stream(src, dst, store, io, None, algorithm=None, expected_size=size, progress=bar.update)

        def manifest_for(result: SaveResult) -> Manifest:
            return Manifest(
                file=paths.basename(dst),
                size=result.size,
                checksum=result.checksum,
                algorithm=result.algorithm,
                epoch=epoch,
                global_step=step,
                metrics=metrics,
                weights_only=weights_only,
                writer=None,  # not a policy's file: no policy and no `ckpthooks prune` ever deletes it
                plugins=plugins,
            )

        written_size = store.commit_stream(dst, write, manifest_for).size
    return {
        "src": src,
        "dst": dst,
        "format": "ckpt",
        "tensors": _count_tensors(checkpoint),
        "size": written_size,
        "committed": True,
        "epoch": epoch,
        "global_step": step,
        "metrics": metrics,
    }


def _algorithm() -> str:
    from ckpthooks._io.hashing import default_algorithm

    return default_algorithm()


def _counting(chunks: Any, update: Any) -> Any:
    for chunk in chunks:
        update(len(chunk))
        yield chunk


def _int_field(checkpoint: dict[str, Any], name: str) -> int:
    value = checkpoint.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _lightning_metrics(checkpoint: dict[str, Any]) -> dict[str, float]:
    """``{monitor: current_score}`` of every ModelCheckpoint state in the file (Lightning keeps the
    scores as one-element tensors)."""
    import torch

    metrics: dict[str, float] = {}
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return metrics
    for state_key, state in callbacks.items():
        if not (isinstance(state_key, str) and state_key.startswith("ModelCheckpoint") and isinstance(state, dict)):
            continue
        monitor, score = state.get("monitor"), state.get("current_score")
        if isinstance(score, torch.Tensor) and score.numel() == 1:
            score = float(score.item())
        if isinstance(monitor, str) and isinstance(score, (int, float)) and not isinstance(score, bool):
            metrics.setdefault(monitor, float(score))
    return metrics
