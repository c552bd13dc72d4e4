"""What the safetensors backend adds to the storage contract: real safetensors files, memory-mapped
loading, no pickle anywhere, and how it is chosen."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from ckpthooks import (
    Checkpointer,
    ConfigurationError,
    CorruptCheckpointError,
    HyperparametersMixin,
    TorchCheckpointIO,
    UnsafeStateError,
)
from ckpthooks.plugin import TEMP_MARKER, PluginHost, set_plugin_host
from ckpthooks.testing.storage_contract import (
    UNPICKLED,
    PickleProbe,
    assert_same_checkpoint,
    fresh_memory_url,
    realistic_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import ckpthooks_safetensors
from ckpthooks_safetensors import SafetensorsCheckpointIO, UnsupportedStateError, plugin
from ckpthooks_safetensors.io import FORMAT_KEY, STRUCTURE_KEY, VERSION_KEY


@pytest.fixture(autouse=True)
def _builtin_host_only() -> Iterator[None]:
    """Tests see only the plugins they register, not what happens to be installed."""
    previous = set_plugin_host(PluginHost(load_entry_points=False))
    try:
        yield
    finally:
        set_plugin_host(previous)


@pytest.fixture
def io() -> SafetensorsCheckpointIO:
    return SafetensorsCheckpointIO()


@pytest.fixture
def host_with_plugin() -> PluginHost:
    host = PluginHost(load_entry_points=False)
    host.register(plugin, "safetensors")
    return host


def _structure(path: Path) -> Any:
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()[STRUCTURE_KEY])


def _rewrite(path: Path, tensors: dict[str, torch.Tensor], **metadata_changes: str) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    metadata.update(metadata_changes)
    save_file(tensors, str(path), metadata=metadata)


# --------------------------------------------------------------------------- the files


def test_files_are_plain_safetensors_that_safetensors_reads(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    checkpoint = realistic_checkpoint()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint(checkpoint, str(path))

    tensors = load_file(str(path))
    assert torch.equal(tensors["state_dict/0.weight"], checkpoint["state_dict"]["0.weight"])
    assert torch.equal(tensors["state_dict/1.num_batches_tracked"], torch.tensor(2))
    assert torch.equal(
        tensors["optimizer_states/0/state/0/exp_avg"], checkpoint["optimizer_states"][0]["state"][0]["exp_avg"]
    )
    assert tensors["dtypes/bfloat16"].dtype == torch.bfloat16
    assert torch.equal(tensors["shapes/transposed"], checkpoint["shapes"]["transposed"])
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt"
    assert metadata[FORMAT_KEY] == "safetensors-checkpoint"
    assert metadata[VERSION_KEY] == "1"


def test_the_structure_is_readable_json_with_tensor_references(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"epoch": 3, "lr": 0.5, "w": torch.ones(2), "steps": {0: "a"}}, str(path))
    assert _structure(path) == {
        "epoch": 3,
        "lr": 0.5,
        "w": {"$": "tensor", "name": "w"},
        "steps": {"$": "dict", "items": [[0, "a"]]},
    }


def test_save_reports_the_size_of_the_file(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    result = io.save_checkpoint({"w": torch.zeros(1000, dtype=torch.float64)}, str(path))
    assert result.size == path.stat().st_size
    header_size = int.from_bytes(path.read_bytes()[:8], "little")
    assert result.size == 8 + header_size + 8000
    assert (8 + header_size) % 8 == 0  # tensors start aligned


def test_saving_streams_instead_of_building_the_file_in_memory(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    checkpoint = {"big": torch.ones(16 * 1024 * 1024, dtype=torch.float32)}  # 64 MiB
    tracemalloc.start()
    try:
        io.save_checkpoint(checkpoint, str(tmp_path / "big.ckpt"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "big.ckpt").stat().st_size > 64 * 1024 * 1024
    assert peak < 20 * 1024 * 1024, f"saving allocated {peak} bytes of Python memory at its peak"


def test_a_local_save_goes_through_a_temporary_sibling(
    io: SafetensorsCheckpointIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        renames.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    io.save_checkpoint({"w": torch.ones(3)}, str(tmp_path / "last.ckpt"))
    [(source, target)] = renames
    assert source.startswith(".last.ckpt" + TEMP_MARKER)
    assert target == "last.ckpt"
    assert os.listdir(tmp_path) == ["last.ckpt"]


# --------------------------------------------------------------------------- loading


def _mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory mapping holds the tensor's data, from /proc/self/maps."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(part, 16) for part in fields[0].split("-"))
            if low <= address < high:
                return fields[5] if len(fields) > 5 else None
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_local_loading_maps_the_file_instead_of_copying_it(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    path = tmp_path / "mapped.ckpt"
    io.save_checkpoint({"w": torch.arange(1_000_000, dtype=torch.float32), "step": 5}, str(path))
    before = path.read_bytes()

    loaded = io.load_checkpoint(str(path))
    assert _mapped_file(loaded["w"]) == str(path)
    assert torch.equal(loaded["w"], torch.arange(1_000_000, dtype=torch.float32))

    loaded["w"].fill_(-1.0)  # the mapping is copy-on-write: the file does not change
    assert path.read_bytes() == before
    assert torch.equal(io.load_checkpoint(str(path))["w"], torch.arange(1_000_000, dtype=torch.float32))


def test_a_checkpoint_replaced_while_it_loads_is_read_whole(
    io: SafetensorsCheckpointIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``last.ckpt`` rewritten by a running training job between the reading of the header and the
    reading of the tensors: the load returns the old version whole, never the new tensors under the
    old structure (the header and the tensors must come from one open file)."""
    path = tmp_path / "last.ckpt"
    versions = [{"version": v, "w": torch.full((1000,), float(v))} for v in range(2)]
    io.save_checkpoint(versions[0], str(path))
    replaced: list[bool] = []

    def replace_first(original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not replaced:  # the new version lands at the path right after the header was read
                replaced.append(True)
                io.save_checkpoint(versions[1], str(path))
            return original(*args, **kwargs)

        return wrapper

    from ckpthooks_safetensors import _format

    # the moment the tensors are fetched: safetensors' torch backend opens the path again by name
    monkeypatch.setattr(torch.UntypedStorage, "from_file", replace_first(torch.UntypedStorage.from_file))
    monkeypatch.setattr(_format, "map_tensors", replace_first(_format.map_tensors))
    loaded = io.load_checkpoint(str(path))

    assert replaced, "the file was not replaced during the load"
    assert loaded["version"] == 0
    assert torch.equal(loaded["w"], versions[0]["w"])
    assert io.load_checkpoint(str(path))["version"] == 1


def test_remote_loading_gives_ordinary_tensors(io: SafetensorsCheckpointIO) -> None:
    with fresh_memory_url() as url:
        io.save_checkpoint({"w": torch.arange(10.0)}, f"{url}/a.ckpt")
        loaded = io.load_checkpoint(f"{url}/a.ckpt")
    assert torch.equal(loaded["w"], torch.arange(10.0))
    loaded["w"][0] = 5.0  # writable, and its own memory
    assert loaded["w"][0].item() == 5.0


def test_views_are_stored_as_copies_and_the_same_view_once(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    base = torch.arange(12.0).view(3, 4)
    checkpoint = {"base": base, "transposed": base.t(), "row": base[1], "tied": base}
    path = tmp_path / "views.ckpt"
    io.save_checkpoint(checkpoint, str(path))

    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == ["base", "row", "transposed"]
        assert handle.get_slice("transposed").get_shape() == [4, 3]
    loaded = io.load_checkpoint(str(path))
    assert_same_checkpoint(loaded, checkpoint)
    assert loaded["tied"] is loaded["base"]
    assert loaded["transposed"].is_contiguous()
    assert loaded["row"].untyped_storage().data_ptr() != loaded["base"].untyped_storage().data_ptr()


def test_parameters_and_requires_grad_are_kept(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    checkpoint = {
        "param": nn.Parameter(torch.ones(2)),
        "frozen": nn.Parameter(torch.zeros(2), requires_grad=False),
        "leaf": torch.ones(3, requires_grad=True),
    }
    io.save_checkpoint(checkpoint, str(tmp_path / "p.ckpt"))
    loaded = io.load_checkpoint(str(tmp_path / "p.ckpt"))
    assert_same_checkpoint(loaded, checkpoint)
    assert type(loaded["param"]) is nn.Parameter and loaded["param"].requires_grad
    assert type(loaded["frozen"]) is nn.Parameter and not loaded["frozen"].requires_grad


def test_dtypes_safetensors_lacks_are_stored_as_raw_bytes(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    checkpoint = {
        "complex128": torch.tensor([[1 + 2j, 3 - 4j]], dtype=torch.complex128),
        "float8_e4m3fnuz": torch.tensor([0.5, -1.0]).to(torch.float8_e4m3fnuz),
        "int32": torch.tensor([1, 2], dtype=torch.int32),
        "empty_complex": torch.zeros(0, 2, dtype=torch.complex128),
    }
    path = tmp_path / "raw.ckpt"
    io.save_checkpoint(checkpoint, str(path))
    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_slice("complex128").get_dtype() == "U8"
        assert handle.get_slice("complex128").get_shape() == [32]
        assert handle.get_slice("int32").get_dtype() == "I32"
    assert _structure(path)["complex128"] == {
        "$": "tensor",
        "name": "complex128",
        "dtype": "complex128",
        "shape": [1, 2],
    }
    assert_same_checkpoint(io.load_checkpoint(str(path)), checkpoint)


def test_map_location_follows_torch_load(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    path = str(tmp_path / "m.ckpt")
    io.save_checkpoint({"w": torch.ones(2)}, path)
    assert io.load_checkpoint(path, map_location={"cpu": "cpu"})["w"].device.type == "cpu"
    assert io.load_checkpoint(path, map_location=torch.device("cpu"))["w"].device.type == "cpu"
    with pytest.raises(ConfigurationError, match="map_location"):
        io.load_checkpoint(path, map_location=lambda storage, location: storage)


# --------------------------------------------------------------------------- no pickle, ever


class _TensorSubclass(torch.Tensor):
    pass


def test_an_arbitrary_object_cannot_be_saved_and_nothing_is_written(
    io: SafetensorsCheckpointIO, tmp_path: Path
) -> None:
    path = tmp_path / "x.ckpt"
    with pytest.raises(
        UnsafeStateError, match=r"callbacks/probe is a ckpthooks\.testing\.storage_contract\.PickleProbe"
    ):
        io.save_checkpoint({"callbacks": {"probe": PickleProbe("never")}}, str(path))
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.eye(3).to_sparse(),
        lambda: torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8),
        lambda: torch.empty(2, device="meta"),
        lambda: torch.ones(2).as_subclass(_TensorSubclass),
    ],
    ids=["sparse", "quantized", "meta", "subclass"],
)
def test_tensors_that_are_not_plain_and_dense_are_refused_before_writing(
    io: SafetensorsCheckpointIO, tmp_path: Path, make: Callable[[], torch.Tensor]
) -> None:
    path = tmp_path / "x.ckpt"
    io.save_checkpoint({"w": torch.ones(2)}, str(path))
    with pytest.raises(UnsupportedStateError, match=r"^w "):
        io.save_checkpoint({"w": make()}, str(path))
    assert torch.equal(io.load_checkpoint(str(path))["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["x.ckpt"]


def test_pickled_bytes_in_the_structure_stay_inert_bytes(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    payload = pickle.dumps(PickleProbe(token))
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"w": torch.ones(1)}, str(path))
    crafted = {"w": {"$": "tensor", "name": "w"}, "blob": {"$": "bytes", "v": base64.b64encode(payload).decode()}}
    _rewrite(path, {"w": torch.ones(1)}, **{STRUCTURE_KEY: json.dumps(crafted)})

    loaded = io.load_checkpoint(str(path), weights_only=False)
    assert loaded["blob"] == payload
    assert token not in UNPICKLED


@pytest.mark.parametrize(
    "structure",
    [
        {"x": {"$": "pickle", "v": "gASVAAAAAAAAAA=="}},
        {"x": {"$": "global", "module": "os", "name": "system"}},
        {"x": {"$": "odict", "items": [], "attrs": {"__class__": {"$": "dtype", "v": "float32"}}}},
        {"x": {"$": "dtype", "v": "__class__"}},
        {"x": {"$": "tensor", "name": "not-in-the-file"}},
        {"x": {"$": "tensor", "name": "w", "dtype": "os.system", "shape": [1]}},
        {"x": {"$": "dict", "items": [[[1, 2], "a list as a key"]]}},
        {"x": {"$": "float", "v": "1e999"}},
        {"x": {"$": "complex", "v": ["1", 2.0]}},
        [1, 2, 3],
        "NaN",
    ],
    ids=[
        "pickle-tag",
        "global",
        "dunder-attr",
        "dtype-attr",
        "missing-tensor",
        "raw-dtype",
        "list-key",
        "float",
        "complex",
        "not-a-dict",
        "nan",
    ],
)
def test_a_tampered_structure_is_reported_as_corrupt(
    io: SafetensorsCheckpointIO, tmp_path: Path, structure: Any
) -> None:
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"w": torch.ones(4)}, str(path))
    text = "NaN" if structure == "NaN" else json.dumps(structure)
    _rewrite(path, {"w": torch.ones(4)}, **{STRUCTURE_KEY: text})
    with pytest.raises(CorruptCheckpointError, match="not a readable safetensors checkpoint"):
        io.load_checkpoint(str(path), weights_only=False)


def test_a_plain_safetensors_file_is_named_as_such(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CorruptCheckpointError, match="tensors only, not a ckpthooks checkpoint"):
        io.load_checkpoint(str(path))


def test_a_newer_format_asks_for_an_upgrade(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"w": torch.ones(2)}, str(path))
    _rewrite(path, {"w": torch.ones(2)}, **{VERSION_KEY: "2"})
    with pytest.raises(CorruptCheckpointError, match="upgrade the plugin"):
        io.load_checkpoint(str(path))


def _header_file(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


_METADATA = {FORMAT_KEY: "safetensors-checkpoint", VERSION_KEY: "1", STRUCTURE_KEY: '{"w":{"$":"tensor","name":"w"}}'}


@pytest.mark.parametrize(
    ("header", "data"),
    [
        ({"__metadata__": _METADATA, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
        ({"__metadata__": _METADATA, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12),
        ({"__metadata__": _METADATA, "w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"__metadata__": _METADATA, "w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
        ({"__metadata__": _METADATA, "w": {"dtype": "PICKLE", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"__metadata__": _METADATA, "w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
        ([1, 2], b""),
    ],
    ids=[
        "truncated",
        "trailing-bytes",
        "shape-mismatch",
        "gap",
        "dtype",
        "negative-shape",
        "metadata",
        "not-an-object",
    ],
)
@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_malformed_header_is_reported_as_corrupt(
    io: SafetensorsCheckpointIO, tmp_path: Path, header: Any, data: bytes, where: str
) -> None:
    content = _header_file(header, data)
    if where == "local":
        path = tmp_path / "bad.ckpt"
        path.write_bytes(content)
        with pytest.raises(CorruptCheckpointError):
            io.load_checkpoint(str(path))
        return
    import fsspec

    with fresh_memory_url() as url:
        fs = fsspec.filesystem("memory")
        fs.pipe_file(f"{url}/bad.ckpt".removeprefix("memory://"), content)
        with pytest.raises(CorruptCheckpointError):
            io.load_checkpoint(f"{url}/bad.ckpt")


def test_a_well_formed_handmade_file_loads_locally_and_remotely(io: SafetensorsCheckpointIO, tmp_path: Path) -> None:
    content = _header_file(
        {"__metadata__": _METADATA, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
        torch.tensor([1.5, -2.0]).numpy().tobytes(),
    )
    (tmp_path / "ok.ckpt").write_bytes(content)
    assert torch.equal(io.load_checkpoint(str(tmp_path / "ok.ckpt"))["w"], torch.tensor([1.5, -2.0]))
    import fsspec

    with fresh_memory_url() as url:
        fsspec.filesystem("memory").pipe_file(f"{url}/ok.ckpt".removeprefix("memory://"), content)
        assert torch.equal(io.load_checkpoint(f"{url}/ok.ckpt")["w"], torch.tensor([1.5, -2.0]))


# --------------------------------------------------------------------------- choosing the backend


class Net(HyperparametersMixin, nn.Module):
    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(2, hidden)


def test_the_plugin_contributes_the_backend_below_the_torch_backend(host_with_plugin: PluginHost) -> None:
    specs = {spec.name: spec for _, spec in host_with_plugin.checkpoint_io_specs()}
    assert specs["safetensors"].protocols == ("*",)
    assert specs["safetensors"].priority < specs["torch"].priority
    assert isinstance(specs["safetensors"].factory(), SafetensorsCheckpointIO)
    for path in ("/tmp/x.ckpt", "memory://x.ckpt", "s3://bucket/x.ckpt"):
        assert type(host_with_plugin.checkpoint_io_for(path)) is TorchCheckpointIO


def test_a_checkpointer_writes_safetensors_when_given_the_backend(host_with_plugin: PluginHost, tmp_path: Path) -> None:
    model = Net()
    ckpt = Checkpointer(
        tmp_path, checkpoint_io=SafetensorsCheckpointIO(), enable_checkpointing=False, plugin_host=host_with_plugin
    ).track(model=model)
    ckpt.save_checkpoint(tmp_path / "st.ckpt")
    Checkpointer(tmp_path, enable_checkpointing=False, plugin_host=host_with_plugin).track(model=model).save_checkpoint(
        tmp_path / "torch.ckpt"
    )

    assert (tmp_path / "torch.ckpt").read_bytes()[:4] == b"PK\x03\x04"
    with safe_open(str(tmp_path / "st.ckpt"), framework="pt") as handle:
        assert "state_dict/layer.weight" in handle.keys()  # noqa: SIM118 - safe_open has no __contains__
        assert json.loads(handle.metadata()[STRUCTURE_KEY])["hyper_parameters"] == {"hidden": 3}


def _saved_with_safetensors(root: Path | str, host: PluginHost) -> tuple[Net, str]:
    model = Net(hidden=4)
    path = f"{root}/epoch=0.ckpt"
    Checkpointer(root, checkpoint_io=SafetensorsCheckpointIO(), enable_checkpointing=False, plugin_host=host).track(
        model=model
    ).save_checkpoint(path)
    return model, path


@pytest.fixture(params=["local", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    if request.param == "local":
        yield tmp_path
        return
    with fresh_memory_url() as url:
        yield url


def test_with_the_plugin_any_checkpointer_restores_safetensors_files(
    host_with_plugin: PluginHost, root: Path | str
) -> None:
    model, _ = _saved_with_safetensors(root, host_with_plugin)
    fresh = Net(hidden=4)
    report = (
        Checkpointer(root, enable_checkpointing=False, plugin_host=host_with_plugin)
        .track(model=fresh)
        .restore("last", must_exist=True)
    )
    assert report is not None and "model" in report.restored
    assert_same_checkpoint(fresh.state_dict(), model.state_dict())


def test_with_the_plugin_load_from_checkpoint_reads_safetensors_files(
    host_with_plugin: PluginHost, tmp_path: Path
) -> None:
    model, path = _saved_with_safetensors(tmp_path, host_with_plugin)
    set_plugin_host(host_with_plugin)
    loaded = Net.load_from_checkpoint(path)
    assert loaded.hparams["hidden"] == 4
    assert_same_checkpoint(loaded.state_dict(), model.state_dict())


def test_without_the_plugin_the_torch_backend_reports_a_foreign_file(tmp_path: Path) -> None:
    host = PluginHost(load_entry_points=False)
    _, path = _saved_with_safetensors(tmp_path, host)
    with pytest.raises(CorruptCheckpointError, match="not a readable checkpoint"):
        Checkpointer(tmp_path, enable_checkpointing=False, plugin_host=host).track(model=Net(hidden=4)).restore(path)


def test_the_plugin_leaves_torch_files_to_the_torch_backend(
    host_with_plugin: PluginHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = Net()
    path = tmp_path / "t.ckpt"
    Checkpointer(tmp_path, enable_checkpointing=False, plugin_host=host_with_plugin).track(model=model).save_checkpoint(
        path
    )
    calls: list[str] = []
    real_load: Callable[..., Any] = SafetensorsCheckpointIO.load_checkpoint
    monkeypatch.setattr(
        SafetensorsCheckpointIO, "load_checkpoint", lambda self, *a, **k: calls.append("st") or real_load(self, *a, **k)
    )
    fresh = Net()
    Checkpointer(tmp_path, enable_checkpointing=False, plugin_host=host_with_plugin).track(model=fresh).restore(path)
    assert calls == []
    assert_same_checkpoint(fresh.state_dict(), model.state_dict())


def test_importing_the_plugin_imports_neither_torch_nor_safetensors() -> None:
    code = (
        "import sys, ckpthooks_safetensors.plugin, ckpthooks_safetensors\n"
        "print('torch' in sys.modules, 'safetensors' in sys.modules)\n"
    )
    root = Path(ckpthooks_safetensors.__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------- remote writes are retried


def test_a_remote_save_is_written_again_after_a_transient_error(faulty_fs: Any) -> None:
    """A dropped connection mid-upload: the whole file is written again (the same retries as the
    torch backend), the object holds the complete second write, and it loads."""
    from ckpthooks.plugin import RetryPolicy, set_default_retry
    from ckpthooks.testing.faults import timed_out

    previous = set_default_retry(RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0))
    try:
        io = SafetensorsCheckpointIO()
        checkpoint = {"state_dict": {"w": torch.arange(1000.0)}, "epoch": 1}
        with faulty_fs.inject("write", nth=1, error=timed_out()) as fault:
            result = io.save_checkpoint(checkpoint, "faulty://st/a.ckpt")
        assert fault.fired == 1
        assert result.size == faulty_fs().size("/st/a.ckpt")
        loaded = io.load_checkpoint("faulty://st/a.ckpt")
        assert torch.equal(loaded["state_dict"]["w"], checkpoint["state_dict"]["w"]) and loaded["epoch"] == 1
    finally:
        set_default_retry(previous)
