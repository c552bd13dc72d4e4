"""``ckpthooks inspect``: what a checkpoint file holds, read without unpickling anything it names."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import click

from ckpthooks._cli.common import (
    describe_error,
    echo,
    emit_json,
    fail,
    format_metrics,
    human_size,
    json_option,
    parse_storage_options,
    plain,
    storage_option,
    table,
)
from ckpthooks._cli.scan import DtypeRef, Opaque, Scan, ScanError, TensorInfo, scan_file, sniff

if TYPE_CHECKING:
    from ckpthooks._io.location import Location

#: Top-level keys shown in the summary itself rather than as components.
_SCALAR_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "hparams_name", "datamodule_hparams_name")


@click.command("inspect")
@click.argument("path")
@click.option("--tensors", "list_tensors", is_flag=True, help="Also list every tensor: its key, dtype and shape.")
@json_option
@storage_option
def inspect_command(path: str, list_tensors: bool, as_json: bool, storage_option_args: tuple[str, ...]) -> None:
    """Show what a checkpoint holds: format, epoch, step, metrics, hyperparameters, components and
    their sizes, tensor count and bytes, and the plugins and versions that wrote it.

    PATH is a .ckpt / torch.save file (ckpthooks, Lightning or plain torch) or a .safetensors file,
    local or an fsspec URL, or a committed folder checkpoint (sharded), which the storage plugin that
    wrote it reads. Nothing in the file is executed: only the pickle's structure is read, by
    a reader that never imports or calls what the file names (such names are listed as "unsafe
    globals"), and tensors' bytes are not read at all. torch is not needed for zip and safetensors
    files.

    Exit codes: 0 when the file was read, 1 when it is missing or not a checkpoint, 2 on bad usage.
    """
    from ckpthooks._catalog import read_manifest
    from ckpthooks._io import paths
    from ckpthooks._io.location import Location
    from ckpthooks._manifest import MANIFEST_SUFFIX
    from ckpthooks.exceptions import CheckpointError

    options = parse_storage_options(storage_option_args)
    target = paths.normalize(path)
    if target.endswith(MANIFEST_SUFFIX):
        target = target[: -len(MANIFEST_SUFFIX)]
    try:
        manifest = read_manifest(target, options, strict=True)
        location = Location.of(target, options)
        if location.is_folder():
            if manifest is None:
                fail(f"{path} is a folder; inspect one checkpoint file (list a folder with ckpthooks ls)")
            scan = _scan_folder(target, options)
        else:
            with _open_file(location) as (handle, size):
                head = handle.read(16)
                handle.seek(0)
                container = sniff(head)
                if container == "torch-legacy":
                    scan = _scan_legacy(handle, size)
                elif container == "unknown":
                    raise ScanError(_unknown(head))
                else:
                    scan = scan_file(handle, size)
    except FileNotFoundError:
        fail(f"no file at {path}")
        return
    except ScanError as exc:
        fail(f"{path} is not a checkpoint this command can read: {exc}")
        return
    except (CheckpointError, OSError) as exc:
        fail(f"could not read {path}: {describe_error(exc)}")
        return
    report = summarize(target, scan, manifest.__dict__ if manifest is not None else None, list_tensors)
    if as_json:
        emit_json(report)
    else:
        echo(_text(report))


@contextlib.contextmanager
def _open_file(location: Location) -> Iterator[tuple[IO[bytes], int]]:
    """The file open for reading, and its size. A local FIFO or device (a symlink to /dev/zero) is
    refused at once with :class:`~ckpthooks.CorruptCheckpointError` instead of blocking or reading
    forever."""
    with location.open_read() as handle:
        yield handle, location.stored_size()


def _unknown(head: bytes) -> str:
    if not head:
        return "the file is empty"
    for magic, what in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"),
                        (b"\x1f\x8b", "gzip-compressed data"), (b"{", "JSON text"), (b"[", "JSON text")):  # fmt: skip
        if head.startswith(magic):
            return f"it is {what}"
    return "neither a torch.save zip file nor a safetensors file"


def _scan_legacy(handle: IO[bytes], size: int) -> Scan:
    """torch's format before 1.6 (no zip): torch's weights-only unpickler reads it, never running code."""
    import pickle

    import torch

    try:
        loaded = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ScanError(f"a legacy-format pickle that torch's weights-only reader refuses ({first})") from exc
    except Exception as exc:
        raise ScanError(f"a legacy-format file torch cannot read ({describe_error(exc)})") from exc
    return Scan("torch-legacy", _from_torch(loaded), size)


def _scan_folder(target: str, options: dict[str, Any] | None) -> Scan:
    """A committed folder checkpoint (sharded): read whole, in this process, by the storage plugin
    that wrote it (the ``ckpthooks-dcp`` plugin reads DCP's index with an allow-list unpickler and
    the rest with ``weights_only=True``), then described like a file's contents."""
    from ckpthooks._cli.common import plugin_host
    from ckpthooks._io import paths
    from ckpthooks._store import CheckpointStore

    try:
        loaded = CheckpointStore(host=plugin_host(), storage_options=options).load(
            target, map_location="cpu", weights_only=True, verify="off"
        )
    except Exception as exc:
        raise ScanError(
            f"a folder checkpoint that no installed storage plugin could read ({describe_error(exc)}); "
            "install the plugin that wrote it (sharded checkpoints: the ckpthooks-dcp plugin, "
            "plugins/ckpthooks-dcp in the ckpthooks repository)"
        ) from exc
    return Scan("folder", _from_torch(loaded), paths.stored_size(target, options))


def _from_torch(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        return TensorInfo(
            str(value.dtype).removeprefix("torch."), tuple(value.shape), str(storage.data_ptr()), storage.nbytes()
        )
    if isinstance(value, dict):
        return {key: _from_torch(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_from_torch(item) for item in value)
    if isinstance(value, torch.dtype):
        return DtypeRef(str(value).removeprefix("torch."))
    return value


# --------------------------------------------------------------------------- the report


def summarize(path: str, scan: Scan, manifest: dict[str, Any] | None, list_tensors: bool = False) -> dict[str, Any]:
    root = scan.obj
    space = root.get("ckpthooks") if isinstance(root, dict) else None
    space = space if isinstance(space, dict) else None
    if space is not None:
        kind = "ckpthooks"
    elif isinstance(root, dict) and "pytorch-lightning_version" in root:
        kind = "lightning"
    elif scan.container == "safetensors":
        kind = "safetensors"
    else:
        kind = "torch"
    report: dict[str, Any] = {
        "path": path,
        "format": kind,
        "container": scan.container,
        "size": scan.size,
        "committed": manifest is not None,
        "epoch": _scalar(root, "epoch", manifest, scan.safetensors_metadata if kind == "safetensors" else None),
        "global_step": _scalar(
            root, "global_step", manifest, scan.safetensors_metadata if kind == "safetensors" else None
        ),
        "metrics": dict(manifest["metrics"]) if manifest else {},
        "weights_only": _weights_only(root, space, manifest, kind),
        "hyperparameters": _readable(root.get("hyper_parameters")) if isinstance(root, dict) else None,
        "datamodule_hyperparameters": (
            _readable(root.get("datamodule_hyper_parameters")) if isinstance(root, dict) else None
        ),
        "written_by": _written_by(root, space, manifest, scan),
        "loads_with_weights_only": not scan.unsafe_globals,
        "unsafe_globals": list(scan.unsafe_globals),
    }
    components = _components(root, kind)
    report["components"] = components
    everything = list(_tensors(root))
    report["tensors"] = {"count": len(_distinct(everything)), "bytes": _bytes(everything)}
    if list_tensors:
        report["tensor_list"] = [
            {"key": key, "dtype": info.dtype, "shape": list(info.shape), "bytes": info.nbytes}
            for key, info in everything
        ]
    report["manifest"] = manifest
    return report


def _scalar(root: Any, key: str, manifest: dict[str, Any] | None, metadata: dict[str, str] | None = None) -> int | None:
    value = root.get(key) if isinstance(root, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if manifest is not None:
        return int(manifest[key])
    text = (metadata or {}).get(key, "")
    return int(text) if text.isdigit() else None  # weights converted by ckpthooks keep them here


def _weights_only(root: Any, space: dict[str, Any] | None, manifest: dict[str, Any] | None, kind: str) -> bool | None:
    if space is not None and isinstance(space.get("weights_only"), bool):
        return bool(space["weights_only"])
    if manifest is not None:
        return bool(manifest.get("weights_only"))
    if kind == "lightning":
        return "optimizer_states" not in root
    return kind == "safetensors" or None


def _written_by(root: Any, space: dict[str, Any] | None, manifest: dict[str, Any] | None, scan: Scan) -> dict[str, Any]:
    written: dict[str, Any] = {}
    if space is not None:
        written["ckpthooks"] = space.get("version")
        written["format_version"] = space.get("format_version")
    elif manifest is not None:
        written["ckpthooks"] = manifest.get("library_version")
    if isinstance(root, dict) and "pytorch-lightning_version" in root:
        written["lightning_layout"] = _readable(root["pytorch-lightning_version"])
    plugins = space.get("plugins") if space is not None else None
    if not isinstance(plugins, dict) and manifest is not None:
        plugins = manifest.get("plugins")
    if isinstance(plugins, dict):
        written["plugins"] = {str(name): version for name, version in plugins.items()}
    if manifest is not None and manifest.get("writer"):
        written["writer"] = manifest["writer"]
    if scan.safetensors_metadata:
        written["safetensors_metadata"] = scan.safetensors_metadata
    return written


def _components(root: Any, kind: str) -> list[dict[str, Any]]:
    if not isinstance(root, dict):
        return [_component("(the whole file)", root)]
    if kind == "safetensors":
        return [_component("tensors", root)]
    found = []
    for key, value in root.items():
        hparams = key in ("hyper_parameters", "datamodule_hyper_parameters")
        if key in _SCALAR_KEYS or (hparams and not list(_tensors(value))):
            continue
        if key == "ckpthooks" and isinstance(value, dict):
            # the namespace's parts one by one (the loop position holds the epoch's RNG states for
            # a mid-epoch resume, the rng component the current ones): no state counted twice
            parts = value.get("components")
            if isinstance(parts, dict):
                for name, state in parts.items():
                    found.append(_component(f"ckpthooks.components.{name}", state, label=str(name)))
            for name, part in value.items():
                if name != "components" and isinstance(part, (dict, list, tuple)) and list(_tensors(part)):
                    found.append(_component(f"ckpthooks.{name}", part, label=f"{name} (ckpthooks)"))
            continue
        found.append(_component(str(key), value))
    return found


def _component(name: str, value: Any, label: str | None = None) -> dict[str, Any]:
    """``name``: the key path in the checkpoint (``--json``); ``label``: what the table shows."""
    tensors = list(_tensors(value))
    return {"name": name, "label": label or name, "tensors": len(_distinct(tensors)), "bytes": _bytes(tensors)}


def _tensors(value: Any, key: str = "") -> Iterator[tuple[str, TensorInfo]]:
    stack: list[tuple[str, Any]] = [(key, value)]
    seen: set[int] = set()
    while stack:
        where, item = stack.pop()
        if isinstance(item, TensorInfo):
            yield where, item
            continue
        if id(item) in seen:
            continue
        if isinstance(item, (dict, list, tuple, set, frozenset, Opaque)):
            seen.add(id(item))
        children: list[tuple[str, Any]] = []
        if isinstance(item, dict):
            children = [(_join(where, k), v) for k, v in item.items()]
        elif isinstance(item, (list, tuple)):
            children = [(_join(where, i), v) for i, v in enumerate(item)]
        elif isinstance(item, Opaque):
            children = [(_join(where, k), v) for k, v in item.mapping.items()]
            children += [(_join(where, i), v) for i, v in enumerate(item.items)]
            children += [(_join(where, "state"), item.state), (_join(where, "args"), list(item.args))]
        stack.extend(reversed(children))


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _distinct(tensors: list[tuple[str, TensorInfo]]) -> set[tuple[str, tuple[int, ...], str]]:
    return {(info.storage, info.shape, info.dtype) for _, info in tensors}


def _bytes(tensors: list[tuple[str, TensorInfo]]) -> int:
    storages = {info.storage: info.storage_nbytes for _, info in tensors}
    return sum(storages.values())


def _readable(value: Any, depth: int = 0) -> Any:
    """Hyperparameters and the like as plain data: tensors and placeholders as short text."""
    if depth > 20:
        return "..."
    if isinstance(value, (TensorInfo, DtypeRef)):
        return str(value)
    if isinstance(value, Opaque):
        if value.mapping:
            return {str(k): _readable(v, depth + 1) for k, v in value.mapping.items()}
        if isinstance(value.state, dict) and value.state:
            return {str(k): _readable(v, depth + 1) for k, v in value.state.items()}
        if value.items:
            return [_readable(v, depth + 1) for v in value.items]
        return f"<{value.global_name}>"
    if isinstance(value, dict):
        return {str(k): _readable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_readable(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return plain(value)


def _text(report: dict[str, Any]) -> str:
    kind = report["format"]
    container = {"torch-zip": "torch.save zip", "torch-legacy": "legacy torch.save", "safetensors": "safetensors"}
    lines = [
        f"path:          {report['path']}",
        f"format:        {kind} ({container.get(report['container'], report['container'])}, "
        f"{human_size(report['size'])})",
        f"committed:     {'yes (manifest beside it)' if report['committed'] else 'no (no valid manifest)'}",
        f"epoch:         {_dash(report['epoch'])}",
        f"global step:   {_dash(report['global_step'])}",
        f"metrics:       {format_metrics(report['metrics'])}",
        f"weights only:  {_yes_no(report['weights_only'])}",
    ]
    written = report["written_by"]
    if written:
        parts = []
        if written.get("ckpthooks"):
            parts.append(f"ckpthooks {written['ckpthooks']}")
        if written.get("lightning_layout") and kind == "lightning":
            parts.append(f"Lightning {written['lightning_layout']}")
        if written.get("writer"):
            parts.append(f"policy {written['writer']}")
        lines.append(f"written by:    {', '.join(parts) or '-'}")
        if written.get("safetensors_metadata"):
            metadata = ", ".join(f"{k}={v}" for k, v in written["safetensors_metadata"].items())
            lines.append(f"metadata:      {metadata}")
        if written.get("plugins"):
            plugins = ", ".join(f"{name} {version or '?'}" for name, version in written["plugins"].items())
            lines.append(f"plugins:       {plugins}")
    tensors = report["tensors"]
    lines.append(f"tensors:       {tensors['count']} ({human_size(tensors['bytes'])})")
    if report["unsafe_globals"]:
        lines.append(
            "unsafe globals: " + ", ".join(report["unsafe_globals"])
            + " (torch.load(weights_only=True) refuses this file; these were not imported or run)"
        )
    hparams, dm_hparams = report["hyperparameters"], report.get("datamodule_hyperparameters")
    if hparams or dm_hparams:
        lines.append("hyperparameters:")
        if hparams:
            items = hparams.items() if isinstance(hparams, dict) else [("value", hparams)]
            lines.extend(f"  {name}: {value}" for name, value in items)
        if dm_hparams:
            lines.append("  datamodule:")
            items = dm_hparams.items() if isinstance(dm_hparams, dict) else [("value", dm_hparams)]
            lines.extend(f"    {name}: {value}" for name, value in items)
    if report["components"]:
        lines.append("components:")
        rows = [[c["label"], str(c["tensors"]), human_size(c["bytes"])] for c in report["components"]]
        lines.extend("  " + line for line in table(["name", "tensors", "bytes"], rows).splitlines())
    if "tensor_list" in report:
        lines.append("tensor list:")
        rows = [[t["key"], t["dtype"], str(tuple(t["shape"])), human_size(t["bytes"])] for t in report["tensor_list"]]
        lines.extend("  " + line for line in table(["key", "dtype", "shape", "bytes"], rows).splitlines())
    return "\n".join(lines)


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")

