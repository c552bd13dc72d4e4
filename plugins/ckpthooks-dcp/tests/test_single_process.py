"""DCPCheckpointIO in one process: the folder commit protocol, safe metadata, pruning, leftovers."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from ckpthooks import (
    Checkpointer,
    CorruptCheckpointError,
    HyperparametersMixin,
    ModelCheckpoint,
    StorageError,
    UnsafeCheckpointError,
)
from ckpthooks.plugin import (
    MANIFEST_SUFFIX,
    TEMP_MARKER,
    PluginHost,
    get_plugin_host,
    hash_local_folder,
    read_manifest,
    verify_checkpoint,
)

import ckpthooks_dcp.plugin
from ckpthooks_dcp import DCPCheckpointIO, read_metadata
from ckpthooks_dcp.io import folder_size


class Net(HyperparametersMixin, torch.nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.Linear(hidden, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def setup(root: Path, seed: int = 0, callbacks: Any = None, **kwargs: Any) -> tuple[Checkpointer, Net, Any]:
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ckpt = Checkpointer(root, callbacks=callbacks, checkpoint_io=DCPCheckpointIO(), **kwargs)
    return ckpt.track(model=model, optimizers=optimizer), model, optimizer


def step(model: Net, optimizer: Any, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model(torch.randn(8, 4, generator=generator)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def visible(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------- metadata without pickle's trust


class _RunsCode:
    def __reduce__(self) -> Any:
        return (os.system, ("touch pwned",))


def test_metadata_is_read_with_an_allow_list(tmp_path: Path) -> None:
    ckpt, _model, _optimizer = setup(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    metadata = read_metadata(str(tmp_path / "a.ckpt"))
    assert type(metadata).__module__ == "torch.distributed.checkpoint.metadata"
    assert "state_dict.body.0.weight" in metadata.state_dict_metadata


def test_metadata_that_names_foreign_code_is_refused_and_never_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt, _model, _optimizer = setup(tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    (tmp_path / "a.ckpt" / ".metadata").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        read_metadata(str(tmp_path / "a.ckpt"))
    fresh, _model, _optimizer = setup(tmp_path, seed=1, enable_checkpointing=False, verify="off")
    with pytest.raises(UnsafeCheckpointError):
        fresh.restore(tmp_path / "a.ckpt")
    assert not (tmp_path / "pwned").exists()


def test_the_structure_entry_loads_weights_only(tmp_path: Path) -> None:
    io = DCPCheckpointIO()
    path = str(tmp_path / "odd.ckpt")
    io.save_checkpoint({"epoch": 1, "odd": torch.nn.Identity(), "w": torch.ones(2)}, path)
    with pytest.raises(UnsafeCheckpointError):
        io.load_checkpoint(path)
    assert isinstance(io.load_checkpoint(path, weights_only=False)["odd"], torch.nn.Identity)


# ---------------------------------------------------------------------- the folder commit protocol


def test_saving_commits_a_folder_written_fresh_and_verified_by_size_and_checksum(tmp_path: Path) -> None:
    ckpt, model, optimizer = setup(tmp_path, enable_checkpointing=False)
    step(model, optimizer, 0)
    folder = str(tmp_path / "a.ckpt")
    manifest = ckpt.save_checkpoint(folder)
    assert manifest is not None and manifest.size == folder_size(folder)
    assert manifest.algorithm == "xxh3_64/files"
    assert (manifest.size, manifest.checksum) == hash_local_folder(folder, "xxh3_64")
    assert visible(tmp_path) == ["a.ckpt", "a.ckpt" + MANIFEST_SUFFIX]
    assert visible(tmp_path / "a.ckpt") == [".metadata", "__0_0.distcp"]
    verify_checkpoint(folder)

    shard = tmp_path / "a.ckpt" / "__0_0.distcp"
    original = shard.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    shard.write_bytes(bytes(flipped))  # same size, one byte changed: only the checksum sees it
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        verify_checkpoint(folder)
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        ckpt.restore(folder)

    shard.write_bytes(original)
    verify_checkpoint(folder)
    os.rename(shard, tmp_path / "a.ckpt" / "__1_0.distcp")  # a renamed shard: same bytes, wrong place
    with pytest.raises(CorruptCheckpointError, match="checksum"):
        verify_checkpoint(folder)
    os.rename(tmp_path / "a.ckpt" / "__1_0.distcp", shard)
    with open(shard, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(CorruptCheckpointError, match="bytes but its manifest records"):
        verify_checkpoint(folder)


def test_a_resume_restores_every_piece_of_state(tmp_path: Path) -> None:
    ckpt, model, optimizer = setup(tmp_path, callbacks=[ModelCheckpoint(save_last=True)])

    @ckpt.loop(max_epochs=2)
    def epoch(index: int) -> None:
        for batch in ckpt.batches(range(3)):
            step(model, optimizer, index * 10 + batch)

    epoch()
    fresh, fresh_model, fresh_optimizer = setup(tmp_path, seed=1, callbacks=[ModelCheckpoint(save_last=True)])
    report = fresh.restore("last")
    assert report is not None and report.global_step == 6
    assert report.restored == ["model", "callbacks", "optimizers", "progress", "rng"] or "model" in report.restored
    for key, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[key], value), key
    assert fresh_model.state_dict()["body.1.num_batches_tracked"].dtype == torch.int64
    saved, loaded = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert sorted(loaded["state"]) == sorted(saved["state"]) == list(range(6))  # integer keys survive
    assert loaded["param_groups"] == saved["param_groups"]
    for index, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(loaded["state"][index][name], value)
    step(model, optimizer, 99)
    step(fresh_model, fresh_optimizer, 99)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[key], value), key


def test_pruning_and_overwrites_delete_whole_folders(tmp_path: Path) -> None:
    policy = ModelCheckpoint(monitor="loss", save_top_k=1, save_last=True)
    ckpt, model, optimizer = setup(tmp_path, callbacks=[policy])

    @ckpt.loop(max_epochs=3)
    def epoch(index: int) -> None:
        for batch in ckpt.batches(range(2)):
            step(model, optimizer, batch)
        ckpt.log("loss", 10.0 - index)

    epoch()
    folder = tmp_path / "checkpoints"
    kept = ["epoch=2-step=6.ckpt", "last.ckpt"]
    assert visible(folder) == sorted(kept + [name + MANIFEST_SUFFIX for name in kept])
    assert read_manifest(str(folder / "last.ckpt")).global_step == 6  # type: ignore[union-attr]


def test_save_last_link_writes_a_folder_again(tmp_path: Path) -> None:
    policy = ModelCheckpoint(monitor="loss", mode="max", save_top_k=1, save_last="link", filename="{epoch}")
    ckpt, model, optimizer = setup(tmp_path, callbacks=[policy])

    @ckpt.loop(max_epochs=2)
    def epoch(index: int) -> None:
        for batch in ckpt.batches(range(1)):
            step(model, optimizer, batch)
        ckpt.log("loss", float(index))

    epoch()
    folder = tmp_path / "checkpoints"
    names = ["epoch=1.ckpt", "last.ckpt"]
    assert visible(folder) == sorted(names + [f"{n}{MANIFEST_SUFFIX}" for n in names])
    assert os.path.isdir(folder / "last.ckpt")


def test_an_overwrite_keeps_the_committed_folder_loadable_until_the_new_one_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt, model, optimizer = setup(tmp_path, enable_checkpointing=False)
    step(model, optimizer, 0)
    ckpt.progress.global_step = 1
    ckpt.save_checkpoint(tmp_path / "last.ckpt")
    first = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, optimizer, 1)
    ckpt.progress.global_step = 2

    from torch.distributed.checkpoint import state_dict_saver

    real_save = state_dict_saver.save
    seen: dict[str, Any] = {}

    def save(*args: Any, **kwargs: Any) -> Any:  # while the new folder is written
        seen["last"] = ckpt.find_checkpoint("last")
        seen["loadable"] = ckpt.store.load(seen["last"])["state_dict"]["body.0.weight"]
        return real_save(*args, **kwargs)

    monkeypatch.setattr(state_dict_saver, "save", save)
    ckpt.save_checkpoint(tmp_path / "last.ckpt")
    assert seen["last"] == str(tmp_path / ".last.ckpt.ckpthooks-prev")
    assert torch.equal(seen["loadable"], first["body.0.weight"])
    assert visible(tmp_path) == ["last.ckpt", "last.ckpt" + MANIFEST_SUFFIX]
    assert read_manifest(str(tmp_path / "last.ckpt")).global_step == 2  # type: ignore[union-attr]


def test_a_failed_overwrite_commits_the_previous_folder_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, model, optimizer = setup(tmp_path, enable_checkpointing=False)
    step(model, optimizer, 0)
    ckpt.save_checkpoint(tmp_path / "last.ckpt")
    first = {k: v.clone() for k, v in model.state_dict().items()}
    step(model, optimizer, 1)

    from torch.distributed.checkpoint import FileSystemWriter

    def broken(self: Any, plan: Any, planner: Any) -> Any:
        raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(FileSystemWriter, "write_data", broken)
    with pytest.raises(StorageError, match="injected"):
        ckpt.save_checkpoint(tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert visible(tmp_path) == ["last.ckpt", "last.ckpt" + MANIFEST_SUFFIX]  # no fresh or kept folder left
    fresh, fresh_model, _optimizer = setup(tmp_path, seed=3, enable_checkpointing=False)
    fresh.restore("last", must_exist=True)
    assert torch.equal(fresh_model.state_dict()["body.0.weight"], first["body.0.weight"])


def test_fresh_folders_of_dead_writers_are_removed_at_the_next_start(tmp_path: Path) -> None:
    leftover = tmp_path / "checkpoints" / f".last.ckpt{TEMP_MARKER}999999999-deadbeef-0"
    leftover.mkdir(parents=True)
    (leftover / "__0_0.distcp").write_bytes(b"partial")
    setup(tmp_path, callbacks=[ModelCheckpoint()])
    assert not leftover.exists()


def test_an_fsspec_url_is_written_in_place_committed_verified_loaded_and_removed(tmp_path: Path) -> None:
    """Any fsspec filesystem, here fsspec's in-memory one (S3 against moto: test_s3.py): DCP
    streams the files under the final name, the manifest commits them, an overwrite replaces
    every file, and removal leaves nothing."""
    import uuid

    from ckpthooks.plugin import filesystem

    root = f"memory://dcp-{uuid.uuid4().hex}/run"
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ckpt = Checkpointer(root, checkpoint_io=DCPCheckpointIO(), enable_checkpointing=False).track(model=model)
    ckpt.save_checkpoint(f"{root}/a.ckpt")
    with torch.no_grad():
        model.weight.add_(1.0)
    ckpt.progress.global_step = 7
    ckpt.save_checkpoint(f"{root}/a.ckpt")  # an overwrite in place
    manifest = verify_checkpoint(f"{root}/a.ckpt")
    assert manifest.global_step == 7 and manifest.algorithm == "xxh3_64/files"
    fs = filesystem(root)
    names = sorted(p.rsplit("/run/", 1)[1] for p in fs.find(root))
    assert names == ["a.ckpt.manifest.json", "a.ckpt/.metadata", "a.ckpt/__0_0.distcp"]
    fresh = torch.nn.Linear(3, 2)
    report = Checkpointer(root, checkpoint_io=DCPCheckpointIO(), enable_checkpointing=False).track(
        model=fresh
    ).restore("last")
    assert report is not None and report.global_step == 7 and torch.equal(fresh.weight, model.weight)
    ckpt.store.remove(f"{root}/a.ckpt")
    assert fs.find(root) == []


# ---------------------------------------------------------------------- the plugin's load hook


@pytest.fixture
def host_with_plugin() -> Any:
    from ckpthooks.plugin import set_plugin_host

    host = PluginHost(load_entry_points=False)
    host.register(ckpthooks_dcp.plugin, "dcp")
    previous = set_plugin_host(host)
    try:
        yield host
    finally:
        set_plugin_host(previous)


def test_folders_load_without_choosing_the_backend(tmp_path: Path, host_with_plugin: PluginHost) -> None:
    ckpt, model, optimizer = setup(tmp_path, enable_checkpointing=False)
    step(model, optimizer, 0)
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    assert get_plugin_host() is host_with_plugin
    plain = Checkpointer(tmp_path, enable_checkpointing=False)
    fresh = Net()
    plain.track(model=fresh).restore("last", must_exist=True, strict=False)
    assert torch.equal(fresh.state_dict()["body.0.weight"], model.state_dict()["body.0.weight"])
    loaded = Net.load_from_checkpoint(tmp_path / "a.ckpt")
    assert torch.equal(loaded.state_dict()["body.2.bias"], model.state_dict()["body.2.bias"])
    specs = {spec.name: spec for _name, spec in host_with_plugin.checkpoint_io_specs()}
    assert specs["dcp"].priority < specs["torch"].priority  # installing it changes no default


def test_names_that_would_collide_get_a_suffix_and_the_structure_round_trips(tmp_path: Path) -> None:
    from collections import OrderedDict

    from ckpthooks_dcp.layout import join, split

    ordered: OrderedDict[str, Any] = OrderedDict(w=torch.ones(2))
    ordered._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    checkpoint = {
        "a.b": torch.zeros(1),
        "a": {"b": torch.ones(1)},
        "t": (torch.ones(3), 2),
        1: [torch.ones(1), None],
        "o": ordered,
    }
    tensors, structure = split(checkpoint)
    assert sorted(tensors) == ["1.0", "a.b", "a.b#1", "o.w", "t.0"]
    rebuilt = join(structure["checkpoint"], tensors)
    assert rebuilt.keys() == checkpoint.keys() and isinstance(rebuilt["t"], tuple)
    assert rebuilt["o"]._metadata == {"": {"version": 1}}
    io = DCPCheckpointIO()
    io.save_checkpoint(checkpoint, str(tmp_path / "c.ckpt"))
    loaded = io.load_checkpoint(str(tmp_path / "c.ckpt"))
    assert torch.equal(loaded["a"]["b"], torch.ones(1)) and torch.equal(loaded["a.b"], torch.zeros(1))
    assert loaded[1][1] is None and loaded["t"][1] == 2 and type(loaded["o"]) is OrderedDict


# ---------------------------------------------------------------------- ckpthooks copy of a folder


def _cli(*args: str) -> Any:
    from ckpthooks.plugin import cli_main as main
    from click.testing import CliRunner

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_copy_commits_a_folder_checkpoint_elsewhere_and_it_restores(tmp_path: Path) -> None:
    ckpt, model, optimizer = setup(tmp_path / "run", enable_checkpointing=False)
    step(model, optimizer, 0)
    source = tmp_path / "run" / "a.ckpt"
    committed = ckpt.save_checkpoint(source)
    assert committed is not None

    out = _cli("copy", str(source), str(tmp_path / "copies" / "b.ckpt"))
    assert out.exit_code == 0, out.output
    copy = tmp_path / "copies" / "b.ckpt"
    assert visible(copy) == [".metadata", "__0_0.distcp"]
    manifest = read_manifest(str(copy))
    assert manifest is not None
    assert (manifest.size, manifest.checksum, manifest.algorithm) == (
        committed.size, committed.checksum, committed.algorithm,
    )  # fmt: skip
    verify_checkpoint(str(copy))
    assert visible(tmp_path / "copies") == ["b.ckpt", "b.ckpt" + MANIFEST_SUFFIX]  # no temporary folder

    # through an object store and back (a DCP folder loads from local or shared disk)
    assert _cli("copy", str(copy), "memory://dcp-copy/b.ckpt").exit_code == 0
    assert read_manifest("memory://dcp-copy/b.ckpt") is not None
    assert _cli("copy", "memory://dcp-copy/b.ckpt", str(tmp_path / "back.ckpt")).exit_code == 0
    fresh, fresh_model, _ = setup(tmp_path / "run", seed=1, enable_checkpointing=False)
    fresh.restore(tmp_path / "back.ckpt")
    for name, value in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[name], value), name


def test_copy_refuses_a_folder_changed_after_its_commit_and_publishes_nothing(tmp_path: Path) -> None:
    ckpt, model, optimizer = setup(tmp_path / "run", enable_checkpointing=False)
    step(model, optimizer, 0)
    source = tmp_path / "run" / "a.ckpt"
    ckpt.save_checkpoint(source)
    shard = source / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))

    (tmp_path / "copies").mkdir()
    out = _cli("copy", str(source), str(tmp_path / "copies" / "b.ckpt"))
    assert out.exit_code == 1
    assert "xxh3_64/files checksum" in out.output
    assert visible(tmp_path / "copies") == []


def test_inspect_describes_a_committed_folder_through_the_plugin(tmp_path: Path, host_with_plugin: PluginHost) -> None:
    """``ckpthooks inspect`` on a sharded checkpoint: the plugin reads it (no foreign code runs),
    and the report is the one a file gets: format, step, components, tensors."""
    import json

    ckpt, model, optimizer = setup(tmp_path, enable_checkpointing=False)
    step(model, optimizer, 0)
    ckpt.progress.global_step = 7
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    out = _cli("inspect", str(tmp_path / "a.ckpt"), "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["format"] == "ckpthooks" and report["container"] == "folder"
    assert report["committed"] is True and report["global_step"] == 7
    names = {component["name"] for component in report["components"]}
    assert {"state_dict", "optimizer_states"} <= names
    expected = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    state = next(c for c in report["components"] if c["name"] == "state_dict")
    assert state["bytes"] == expected
    assert report["manifest"]["algorithm"] == "xxh3_64/files"

    text = _cli("inspect", str(tmp_path / "a.ckpt"))
    assert text.exit_code == 0 and "folder" in text.output


def test_inspect_without_the_plugin_says_which_plugin_reads_the_folder(tmp_path: Path) -> None:
    ckpt, model, optimizer = setup(tmp_path, enable_checkpointing=False)
    step(model, optimizer, 0)
    ckpt.save_checkpoint(tmp_path / "a.ckpt")  # DCPCheckpointIO passed explicitly: no plugin registered
    out = _cli("inspect", str(tmp_path / "a.ckpt"))
    assert out.exit_code == 1
    said = out.output.replace("\n", " ")
    assert "the ckpthooks-dcp plugin, plugins/ckpthooks-dcp in the ckpthooks repository" in said
