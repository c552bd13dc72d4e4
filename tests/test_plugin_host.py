"""The plugin host: built-in plugins, entry points loaded one at a time, contributions, backends."""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpthooks
from ckpthooks import (
    Callback,
    Checkpointer,
    CheckpointIO,
    CheckpointIOSpec,
    DuplicateContributionError,
    PluginError,
    PluginLoadError,
    StateComponent,
    TorchCheckpointIO,
    hookimpl,
)
from ckpthooks import _plugin_host as plugin_host_module
from ckpthooks._plugin_host import PluginHost, PluginLoadWarning

BUILTINS = ["builtin-state", "builtin-policies", "builtin-storage", "builtin-lightning"]
ENV_VARIABLES = (
    "CKPTHOOKS_STRICT_PLUGINS",
    "CKPTHOOKS_PLUGINS_ALLOW",
    "CKPTHOOKS_PLUGINS_BLOCK",
    "CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD",
)


@pytest.fixture(autouse=True)
def _clean_plugin_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


# --------------------------------------------------------------------------- helpers


def module_plugin(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A module object carrying ``hooks`` (functions already marked with ``@hookimpl``)."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, function)
    return module


class Component(StateComponent):
    """A state component holding one int."""

    def __init__(self, name: str, value: int = 0) -> None:
        self.name = name
        self.value = value

    def dump(self, checkpointer: Any) -> int:
        return self.value

    def load(self, checkpointer: Any, state: Any) -> None:
        self.value = int(state)


class ComponentPlugin:
    """A plugin contributing state components with the given names."""

    def __init__(self, *names: str) -> None:
        self.components = [Component(name) for name in names]

    @hookimpl
    def register_state_components(self, checkpointer: Any) -> Sequence[StateComponent]:
        return self.components


class Policy(Callback):
    def __init__(self, key: str) -> None:
        self.key = key

    @property
    def state_key(self) -> str:
        return self.key


class PolicyPlugin:
    def __init__(self, *keys: str) -> None:
        self.policies = [Policy(key) for key in keys]

    @hookimpl
    def register_policies(self, checkpointer: Any) -> Sequence[Callback]:
        return self.policies


class RecordingIO(CheckpointIO):
    """A real backend (``torch.save`` to the path through fsspec) that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        import fsspec

        self.calls.append(("save", path))
        with fsspec.open(path, "wb") as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(
        self,
        path: str,
        map_location: Any = None,
        storage_options: Mapping[str, Any] | None = None,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        import fsspec

        self.calls.append(("load", path))
        with fsspec.open(path, "rb") as handle:
            loaded: dict[str, Any] = torch.load(
                handle, map_location=map_location, weights_only=weights_only
            )
        return loaded

    def remove_checkpoint(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.calls.append(("remove", path))
        fs, fs_path = fsspec.core.url_to_fs(path)
        if fs.exists(fs_path):
            fs.rm(fs_path)


class StoragePlugin:
    """Contributes one backend spec; counts how often its factory runs."""

    def __init__(self, name: str, protocols: tuple[str, ...], priority: int) -> None:
        self.built: list[RecordingIO] = []
        self.spec = CheckpointIOSpec(
            name=name, protocols=protocols, factory=self._build, priority=priority
        )

    def _build(self) -> CheckpointIO:
        io = RecordingIO()
        self.built.append(io)
        return io

    @hookimpl
    def register_checkpoint_io(self) -> Sequence[CheckpointIOSpec]:
        return [self.spec]


def new_host() -> PluginHost:
    return PluginHost(load_entry_points=False)


def checkpointer(host: PluginHost, root: Path) -> Checkpointer:
    return Checkpointer(root, plugin_host=host, enable_checkpointing=False, save_rng_state=False)


# --------------------------------------------------------------------------- fake entry points

GOOD_PLUGIN = '''
from ckpthooks import hookimpl

@hookimpl
def on_save_checkpoint(checkpoint):
    checkpoint["good_plugin"] = "was here"
'''

IMPORT_ERROR_PLUGIN = """
raise ImportError("needs the package ckh_missing_dependency")
"""

UNKNOWN_HOOK_PLUGIN = """
from ckpthooks import hookimpl

@hookimpl
def on_save_checkpoin(checkpoint):
    pass
"""

BAD_ARGUMENT_PLUGIN = """
from ckpthooks import hookimpl

@hookimpl
def on_save_checkpoint(checkpoint, not_a_parameter):
    pass
"""

DUPLICATE_TORCH_PLUGIN = """
from ckpthooks import CheckpointIOSpec, TorchCheckpointIO, hookimpl

@hookimpl
def register_checkpoint_io():
    return [CheckpointIOSpec(name="torch", protocols=("memory",), factory=TorchCheckpointIO, priority=5)]
"""

PLUGIN_SOURCES = {
    "dup-torch": ("ckh_fake_dup_torch", DUPLICATE_TORCH_PLUGIN),
    "good": ("ckh_fake_good", GOOD_PLUGIN),
    "broken": ("ckh_fake_broken", IMPORT_ERROR_PLUGIN),
    "misspelled": ("ckh_fake_misspelled", UNKNOWN_HOOK_PLUGIN),
    "badargs": ("ckh_fake_badargs", BAD_ARGUMENT_PLUGIN),
}


@pytest.fixture
def fake_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., None]]:
    """``install("good", "broken", ...)``: real EntryPoint objects for modules in a tmp folder."""
    folder = tmp_path / "plugin_modules"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    real_entry_points = metadata.entry_points

    def install(*names: str) -> None:
        entry_points = []
        for name in names:
            module, source = PLUGIN_SOURCES[name]
            (folder / f"{module}.py").write_text(textwrap.dedent(source))
            entry_points.append(metadata.EntryPoint(name, module, "ckpthooks"))
        importlib.invalidate_caches()

        def fake(**params: Any) -> Any:
            if params.get("group") == "ckpthooks":
                return list(entry_points)
            return real_entry_points(**params)

        monkeypatch.setattr(plugin_host_module.metadata, "entry_points", fake)

    yield install
    for module, _ in PLUGIN_SOURCES.values():
        sys.modules.pop(module, None)


def names(host: PluginHost) -> list[str]:
    return [info.name for info in host.plugins()]


# --------------------------------------------------------------------------- built-in plugins


def test_builtin_plugins_are_registered_first_with_source_builtin() -> None:
    host = new_host()
    infos = host.plugins()
    assert [info.name for info in infos] == BUILTINS
    assert {info.source for info in infos} == {"builtin"}
    assert {info.distribution for info in infos} == {"ckpthooks"}
    assert {info.version for info in infos} == {ckpthooks.__version__}
    assert all(info.active and info.error is None for info in infos)
    by_name = {info.name: info for info in infos}
    assert by_name["builtin-state"].hooks == ("register_state_components",)
    assert by_name["builtin-policies"].hooks == ("register_policies",)
    assert by_name["builtin-storage"].hooks == (
        "load_checkpoint",
        "register_checkpoint_io",
        "remove_checkpoint",
        "save_checkpoint",
        "write_checkpoint_bytes",
    )
    assert by_name["builtin-lightning"].hooks == ("on_load_checkpoint", "on_save_checkpoint")


def test_manual_plugin_gets_source_manual_after_the_builtins() -> None:
    host = new_host()
    plugin = ComponentPlugin("extra")
    assert host.register(plugin, "mine") == "mine"
    infos = host.plugins()
    assert [info.name for info in infos] == [*BUILTINS, "mine"]
    assert infos[-1].source == "manual"
    assert infos[-1].hooks == ("register_state_components",)
    assert infos[-1].distribution is None


def test_module_plugin_is_named_after_its_module_by_default() -> None:
    @hookimpl
    def on_save_checkpoint(checkpoint: dict[str, Any]) -> None:
        checkpoint["x"] = 1

    host = new_host()
    assert host.register(module_plugin("my_module_plugin", on_save_checkpoint=on_save_checkpoint)) == (
        "my_module_plugin"
    )
    assert host.plugins()[-1].module == "my_module_plugin"


def test_registering_the_same_name_twice_is_an_error() -> None:
    host = new_host()
    host.register(ComponentPlugin("a"), "same")
    with pytest.raises(PluginError, match="'same' is already registered"):
        host.register(ComponentPlugin("b"), "same")


def test_unregister_removes_the_plugin_and_its_contributions(tmp_path: Path) -> None:
    host = new_host()
    host.register(ComponentPlugin("extra"), "mine")
    host.unregister("mine")
    assert names(host) == BUILTINS
    assert "extra" not in [c.name for _, c in host.state_components(checkpointer(host, tmp_path))]
    with pytest.raises(PluginError, match="no plugin named 'mine'"):
        host.unregister("mine")


def test_blocked_builtin_is_not_registered() -> None:
    host = PluginHost(load_entry_points=False, block={"builtin-policies"})
    assert names(host) == ["builtin-state", "builtin-storage", "builtin-lightning"]


# --------------------------------------------------------------------------- hook validation


def test_misspelled_hook_name_is_rejected_naming_the_hook_and_plugin() -> None:
    @hookimpl
    def on_save_checkpoin(checkpoint: dict[str, Any]) -> None:
        pass

    host = new_host()
    with pytest.raises(PluginError) as info:
        host.register(module_plugin("typo_plugin", on_save_checkpoin=on_save_checkpoin), "typo")
    assert "on_save_checkpoin" in str(info.value)
    assert "'typo'" in str(info.value)
    assert names(host) == BUILTINS
    assert host.pm.get_plugin("typo") is None


def test_hookimpl_with_an_argument_the_spec_lacks_is_a_plugin_error() -> None:
    @hookimpl
    def on_save_checkpoint(checkpoint: dict[str, Any], not_a_parameter: int) -> None:
        pass

    @hookimpl
    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        pass

    host = new_host()
    plugin = module_plugin(
        "badargs", on_save_checkpoint=on_save_checkpoint, on_load_checkpoint=on_load_checkpoint
    )
    with pytest.raises(PluginError) as info:
        host.register(plugin, "badargs")
    assert "not_a_parameter" in str(info.value)
    assert "'badargs'" in str(info.value)
    # nothing of the rejected plugin stays behind, not even its valid hooks
    assert host.pm.get_plugin("badargs") is None
    assert [i.plugin_name for i in host.pm.hook.on_load_checkpoint.get_hookimpls()] == ["builtin-lightning"]
    assert names(host) == BUILTINS


# --------------------------------------------------------------------------- contributions


def test_two_plugins_contributing_one_state_component_name_are_rejected(tmp_path: Path) -> None:
    host = new_host()
    host.register(ComponentPlugin("ema"), "plugin-one")
    host.register(ComponentPlugin("ema"), "plugin-two")
    with pytest.raises(DuplicateContributionError) as info:
        checkpointer(host, tmp_path)
    message = str(info.value)
    assert "state component 'ema'" in message
    assert "'plugin-one'" in message and "'plugin-two'" in message
    assert info.value.plugins == ("plugin-one", "plugin-two")


def test_a_plugin_component_named_like_a_builtin_one_is_rejected(tmp_path: Path) -> None:
    host = new_host()
    host.register(ComponentPlugin("rng"), "my-rng")
    with pytest.raises(DuplicateContributionError) as info:
        checkpointer(host, tmp_path)
    assert info.value.plugins == ("builtin-state", "my-rng")


def test_a_plugin_contributing_a_storage_backend_name_already_registered_is_rejected_at_registration() -> None:
    host = new_host()
    host.register(StoragePlugin("fast", ("memory",), 5), "store-b")
    with pytest.raises(DuplicateContributionError) as info:
        host.register(StoragePlugin("fast", ("s3",), 5), "store-a")
    message = str(info.value)
    assert "storage backend 'fast'" in message
    assert info.value.plugins == ("store-b", "store-a")
    # the rejected plugin is not registered; the first one still serves its protocol
    assert host.pm.get_plugin("store-a") is None and "store-a" not in names(host)
    assert [spec.name for _, spec in host.checkpoint_io_specs()] == ["torch", "fast"]


def test_a_backend_named_like_the_builtin_torch_backend_is_rejected_at_registration() -> None:
    host = new_host()
    with pytest.raises(DuplicateContributionError, match=r"'builtin-storage'.*'my-torch'"):
        host.register(StoragePlugin("torch", ("memory",), 5), "my-torch")
    assert isinstance(host.checkpoint_io_for("memory://x/a.ckpt"), TorchCheckpointIO)


def test_two_plugins_contributing_one_policy_state_key_are_rejected(tmp_path: Path) -> None:
    host = new_host()
    host.register(PolicyPlugin("KeepEveryHour"), "policy-one")
    host.register(PolicyPlugin("KeepEveryHour"), "policy-two")
    with pytest.raises(DuplicateContributionError) as info:
        checkpointer(host, tmp_path)
    assert "policy 'KeepEveryHour'" in str(info.value)
    assert info.value.plugins == ("policy-one", "policy-two")


def test_a_non_sequence_contribution_is_a_plugin_error(tmp_path: Path) -> None:
    class Bad:
        @hookimpl
        def register_state_components(self) -> Any:
            return Component("single")

    host = new_host()
    host.register(Bad(), "bad")
    with pytest.raises(PluginError, match=r"'bad'.*must return a sequence, not Component"):
        checkpointer(host, tmp_path)


@pytest.mark.parametrize("order", [("zeta", "alpha", "mid"), ("mid", "alpha", "zeta")])
def test_contributions_are_combined_builtins_first_then_by_plugin_name(
    tmp_path: Path, order: tuple[str, ...]
) -> None:
    host = new_host()
    for plugin_name in order:
        host.register(ComponentPlugin(f"{plugin_name}-1", f"{plugin_name}-2"), plugin_name)
        host.register(PolicyPlugin(f"policy-{plugin_name}"), f"{plugin_name}-policies")
        host.register(StoragePlugin(f"io-{plugin_name}", ("memory",), 1), f"{plugin_name}-io")
    ckpt = checkpointer(host, tmp_path)

    components = host.state_components(ckpt)
    builtin_names = [
        "model", "datamodule", "callbacks", "optimizers", "lr_schedulers", "scaler",
        "progress", "hyperparameters", "rng",
    ]  # fmt: skip
    assert [c.name for _, c in components] == [
        *builtin_names, "alpha-1", "alpha-2", "mid-1", "mid-2", "zeta-1", "zeta-2",
    ]  # fmt: skip
    assert [p for p, _ in components] == ["builtin-state"] * 9 + [
        "alpha", "alpha", "mid", "mid", "zeta", "zeta",
    ]  # fmt: skip
    assert [c.name for c in ckpt.components] == [c.name for _, c in components]
    assert [p.state_key for _, p in host.policies(ckpt) if not p.is_default_policy] == [
        "policy-alpha",
        "policy-mid",
        "policy-zeta",
    ]
    assert [s.name for _, s in host.checkpoint_io_specs()] == ["torch", "io-alpha", "io-mid", "io-zeta"]
    assert names(host)[: len(BUILTINS)] == BUILTINS
    assert names(host)[len(BUILTINS) :] == sorted(names(host)[len(BUILTINS) :])


def test_builtin_default_policy_comes_before_plugin_policies(tmp_path: Path) -> None:
    host = new_host()
    host.register(PolicyPlugin("AAA-first-by-name"), "aaa")
    ckpt = Checkpointer(tmp_path, plugin_host=host)
    # contributed in plugin order (built-ins first); the plugin's callback saves nothing, so it
    # runs before the default ModelCheckpoint: every policy runs after the other callbacks
    assert [type(cb).__name__ for _plugin, cb in host.policies(ckpt)] == ["ModelCheckpoint", "Policy"]
    assert [type(cb).__name__ for cb in ckpt.callbacks] == ["Policy", "ModelCheckpoint"]


# --------------------------------------------------------------------------- storage backends


def test_builtin_torch_backend_serves_every_protocol() -> None:
    host = new_host()
    assert isinstance(host.checkpoint_io_for("/tmp/x/a.ckpt"), TorchCheckpointIO)
    assert isinstance(host.checkpoint_io_for("memory://x/a.ckpt"), TorchCheckpointIO)
    [(plugin, spec)] = host.checkpoint_io_specs()
    assert (plugin, spec.name, spec.protocols, spec.priority) == ("builtin-storage", "torch", ("*",), 0)


def test_higher_priority_backend_wins_for_its_protocol_only(tmp_path: Path) -> None:
    host = new_host()
    plugin = StoragePlugin("memory-fast", ("memory",), 10)
    host.register(plugin, "memory-plugin")
    assert plugin.built == []  # factories run lazily, on first use

    memory_io = host.checkpoint_io_for("memory://ckh-priority/a.ckpt")
    assert memory_io is plugin.built[0]
    assert host.checkpoint_io_for("memory://ckh-priority/b.ckpt") is memory_io  # built once
    assert len(plugin.built) == 1
    assert isinstance(host.checkpoint_io_for(str(tmp_path / "a.ckpt")), TorchCheckpointIO)
    assert isinstance(host.checkpoint_io_for(f"file://{tmp_path}/a.ckpt"), TorchCheckpointIO)


def test_lower_priority_backend_loses_to_the_builtin_one() -> None:
    host = new_host()
    plugin = StoragePlugin("memory-slow", ("memory",), -1)
    host.register(plugin, "slow")
    assert isinstance(host.checkpoint_io_for("memory://ckh-low/a.ckpt"), TorchCheckpointIO)
    assert plugin.built == []


def test_registering_a_backend_plugin_resets_the_backend_choice() -> None:
    host = new_host()
    assert isinstance(host.checkpoint_io_for("memory://ckh-reset/a.ckpt"), TorchCheckpointIO)
    plugin = StoragePlugin("memory-fast", ("memory",), 10)
    host.register(plugin, "memory-plugin")
    assert host.checkpoint_io_for("memory://ckh-reset/a.ckpt") is plugin.built[0]
    host.unregister("memory-plugin")
    assert isinstance(host.checkpoint_io_for("memory://ckh-reset/a.ckpt"), TorchCheckpointIO)


def test_a_protocol_nobody_serves_is_a_configuration_error() -> None:
    host = PluginHost(load_entry_points=False, load_builtins=False)
    with pytest.raises(ckpthooks.ConfigurationError, match="no storage backend serves 'memory'"):
        host.checkpoint_io_for("memory://x/a.ckpt")


def test_plugin_backend_does_the_saving_and_loading_for_its_urls() -> None:
    import fsspec

    host = new_host()
    plugin = StoragePlugin("memory-fast", ("memory",), 10)
    host.register(plugin, "memory-plugin")
    root = "memory://ckh-plugin-backend"
    try:
        ckpt = Checkpointer(root, plugin_host=host, enable_checkpointing=False, save_rng_state=False)
        ckpt.save_checkpoint(f"{root}/a.ckpt")
        ckpt.restore(f"{root}/a.ckpt")
        # a run never deletes the file it resumed from: another checkpointer removes it
        other = Checkpointer(root, plugin_host=host, enable_checkpointing=False, save_rng_state=False)
        assert other.remove_checkpoint(f"{root}/a.ckpt") is not False
        [io] = plugin.built
        assert io.calls == [
            ("save", f"{root}/a.ckpt"),
            ("load", f"{root}/a.ckpt"),
            ("remove", f"{root}/a.ckpt"),
        ]
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists("/ckh-plugin-backend"):
            fs.rm("/ckh-plugin-backend", recursive=True)


def test_user_checkpoint_io_overrides_every_plugin_backend(tmp_path: Path) -> None:
    host = new_host()
    plugin = StoragePlugin("file-fast", ("file",), 100)
    host.register(plugin, "file-plugin")
    mine = RecordingIO()

    def new_checkpointer() -> Checkpointer:
        return Checkpointer(
            tmp_path, plugin_host=host, checkpoint_io=mine, enable_checkpointing=False, save_rng_state=False
        )

    path = str(tmp_path / "a.ckpt")
    manifest = new_checkpointer().save_checkpoint(path)
    assert manifest is not None and manifest.size == (tmp_path / "a.ckpt").stat().st_size
    report = new_checkpointer().restore(path)
    assert report is not None and report.path == path
    assert new_checkpointer().remove_checkpoint(path) is not False
    assert mine.calls == [("save", path), ("load", path), ("remove", path)]
    assert not (tmp_path / "a.ckpt").exists()
    assert plugin.built == []


def test_checkpoint_io_must_be_a_checkpoint_io(tmp_path: Path) -> None:
    with pytest.raises(ckpthooks.ConfigurationError, match=r"must be a ckpthooks\.CheckpointIO"):
        Checkpointer(tmp_path, plugin_host=new_host(), checkpoint_io=object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- track() vs plugins


def test_track_name_colliding_with_a_plugin_component_names_plugin_and_track(tmp_path: Path) -> None:
    host = new_host()
    host.register(ComponentPlugin("ema"), "ema-plugin")
    ckpt = checkpointer(host, tmp_path)
    with pytest.raises(DuplicateContributionError) as info:
        ckpt.track(ema=torch.nn.Linear(2, 2))
    message = str(info.value)
    assert "'ema-plugin'" in message and "'Checkpointer.track'" in message
    assert info.value.plugins == ("ema-plugin", "Checkpointer.track")
    assert "ema" not in [c.name for c in ckpt.components if not isinstance(c, Component)]


def test_track_name_colliding_with_a_builtin_component_names_builtin_state(tmp_path: Path) -> None:
    ckpt = checkpointer(new_host(), tmp_path)
    with pytest.raises(DuplicateContributionError, match=r"'builtin-state'.*'Checkpointer\.track'"):
        ckpt.track(rng=torch.nn.Linear(2, 2))


def test_plugin_component_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    host = new_host()
    plugin = ComponentPlugin("counter")
    host.register(plugin, "counter-plugin")
    plugin.components[0].value = 7
    path = str(tmp_path / "a.ckpt")
    checkpointer(host, tmp_path).save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert saved["ckpthooks"]["components"]["counter"] == 7
    assert saved["ckpthooks"]["plugins"]["counter-plugin"] is None

    plugin.components[0].value = 0
    report = checkpointer(host, tmp_path).restore(path)
    assert report is not None and "counter" in report.restored
    assert plugin.components[0].value == 7


# --------------------------------------------------------------------------- entry points


def test_entry_points_load_one_at_a_time_and_broken_ones_are_recorded(
    fake_entry_points: Callable[..., None], tmp_path: Path
) -> None:
    fake_entry_points("good", "broken", "misspelled")
    with pytest.warns(PluginLoadWarning) as record:
        host = PluginHost()

    assert names(host) == [*BUILTINS, "good", "broken", "misspelled"]
    infos = {info.name: info for info in host.plugins()}
    good = infos["good"]
    assert (good.source, good.active, good.error) == ("entrypoint", True, None)
    assert good.hooks == ("on_save_checkpoint",)
    assert good.module == "ckh_fake_good"

    broken = infos["broken"]
    assert broken.active is False and broken.source == "entrypoint"
    assert broken.error == "ImportError: needs the package ckh_missing_dependency"
    assert broken.module == "ckh_fake_broken"
    misspelled = infos["misspelled"]
    assert misspelled.active is False
    assert misspelled.error is not None and "on_save_checkpoin" in misspelled.error
    assert [info.name for info in host.failures] == ["broken", "misspelled"]
    assert host.pm.get_plugin("misspelled") is None

    messages = [str(w.message) for w in record.list if issubclass(w.category, PluginLoadWarning)]
    assert len(messages) == 2
    assert "'broken'" in messages[0] and "ckh_missing_dependency" in messages[0]
    assert "'misspelled'" in messages[1] and "on_save_checkpoin" in messages[1]
    assert all("\n" not in message for message in messages)

    # the host carries on: the good plugin's hook runs on save
    path = str(tmp_path / "a.ckpt")
    checkpointer(host, tmp_path).save_checkpoint(path)
    assert torch.load(path, weights_only=True)["good_plugin"] == "was here"
    assert host.plugin_versions() == {name: ckpthooks.__version__ for name in BUILTINS} | {
        "good": None
    }


def test_plugin_load_warning_is_one_line_even_for_a_multi_line_error(
    fake_entry_points: Callable[..., None],
) -> None:
    fake_entry_points("badargs")
    with pytest.warns(PluginLoadWarning) as record:
        host = PluginHost()
    [failure] = host.failures
    assert failure.error is not None and "not_a_parameter" in failure.error
    assert "\n" not in failure.error  # one row in the `ckpthooks plugins` table
    [warning] = [w for w in record.list if issubclass(w.category, PluginLoadWarning)]
    assert "\n" not in str(warning.message)
    assert "'badargs'" in str(warning.message)
    assert host.pm.get_plugin("badargs") is None


def test_strict_mode_raises_plugin_load_error_naming_the_plugin(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("good", "broken")
    monkeypatch.setenv("CKPTHOOKS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError) as info:
        PluginHost()
    assert info.value.name == "broken"
    assert isinstance(info.value.error, ImportError)
    assert "plugin 'broken' failed to load: ImportError: needs the package" in str(info.value)
    assert "CKPTHOOKS_PLUGINS_BLOCK" in str(info.value)


def test_strict_mode_rejects_a_misspelled_hook(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("misspelled")
    monkeypatch.setenv("CKPTHOOKS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match=r"'misspelled'.*on_save_checkpoin"):
        PluginHost()


def test_strict_argument_overrides_the_environment(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("broken")
    monkeypatch.setenv("CKPTHOOKS_STRICT_PLUGINS", "1")
    with pytest.warns(PluginLoadWarning):
        host = PluginHost(strict=False)
    assert [info.name for info in host.failures] == ["broken"]


def test_allow_list_loads_only_the_named_plugins(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("good", "broken", "misspelled")
    monkeypatch.setenv("CKPTHOOKS_PLUGINS_ALLOW", "good")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing broken is even tried
        host = PluginHost()
    assert names(host) == [*BUILTINS, "good"]
    assert host.failures == []


def test_block_list_skips_the_named_plugins(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("good", "broken")
    monkeypatch.setenv("CKPTHOOKS_PLUGINS_BLOCK", " good , broken ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        host = PluginHost()
    assert names(host) == BUILTINS
    assert "ckh_fake_good" not in sys.modules


def test_block_list_can_remove_a_builtin_plugin(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("good")
    monkeypatch.setenv("CKPTHOOKS_PLUGINS_BLOCK", "builtin-policies")
    host = PluginHost()
    assert names(host) == ["builtin-state", "builtin-storage", "builtin-lightning", "good"]
    assert host.pm.hook.register_policies.get_hookimpls() == []


def test_disable_autoload_loads_no_entry_point(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("good", "broken")
    monkeypatch.setenv("CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("CKPTHOOKS_STRICT_PLUGINS", "1")  # would raise if "broken" were tried
    host = PluginHost()
    assert names(host) == BUILTINS
    assert host.failures == []


def test_entry_points_are_loaded_in_name_order(fake_entry_points: Callable[..., None]) -> None:
    fake_entry_points("misspelled", "good", "broken", "badargs")
    with pytest.warns(PluginLoadWarning) as record:
        PluginHost()
    failed = [str(w.message).split("'")[1] for w in record.list]
    assert failed == ["badargs", "broken", "misspelled"]


# --------------------------------------------------------------------------- the shared host


def test_get_plugin_host_builds_one_shared_host_and_set_plugin_host_replaces_it() -> None:
    from ckpthooks._plugin_host import get_plugin_host, set_plugin_host

    mine = new_host()
    previous = set_plugin_host(mine)
    try:
        assert get_plugin_host() is mine
        assert get_plugin_host() is get_plugin_host()
        set_plugin_host(None)
        rebuilt = get_plugin_host()
        assert rebuilt is not mine and isinstance(rebuilt, PluginHost)
    finally:
        set_plugin_host(previous)


def test_checkpointer_uses_the_shared_host_by_default(tmp_path: Path) -> None:
    from ckpthooks._plugin_host import get_plugin_host

    host = get_plugin_host()
    host.register(ComponentPlugin("shared-counter"), "shared")
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False)
    assert ckpt.host is host
    assert "shared-counter" in [c.name for c in ckpt.components]


def test_a_wrapper_on_a_contribution_hook_is_rejected_by_name() -> None:
    from ckpthooks import PluginError, hookimpl
    from ckpthooks._plugin_host import PluginHost

    class Wrapping:
        @hookimpl(wrapper=True)
        def register_state_components(self, checkpointer):  # type: ignore[no-untyped-def]
            return (yield)

    host = PluginHost(load_entry_points=False)
    with pytest.raises(PluginError, match=r"'wrapping'.*register_state_components.*wrapper"):
        host.register(Wrapping(), "wrapping")
    assert "wrapping" not in [p.name for p in host.plugins()]


# --------------------------------------------------------------------------- duplicates at load time


def test_an_entry_point_whose_backend_name_is_taken_is_recorded_as_a_load_failure_naming_both_plugins(
    fake_entry_points: Callable[..., None],
) -> None:
    fake_entry_points("dup-torch", "good")
    with pytest.warns(PluginLoadWarning, match="'dup-torch'"):
        host = PluginHost()
    [failure] = host.failures
    assert failure.name == "dup-torch"
    assert failure.error is not None
    assert "DuplicateContributionError" in failure.error
    assert "'builtin-storage'" in failure.error and "'dup-torch'" in failure.error
    assert host.pm.get_plugin("dup-torch") is None
    assert names(host) == [*BUILTINS, "good", "dup-torch"]  # active ones, then the failure
    assert [spec.name for _, spec in host.checkpoint_io_specs()] == ["torch"]


def test_strict_mode_raises_duplicate_contribution_error_when_an_entry_point_repeats_a_backend_name(
    fake_entry_points: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points("dup-torch")
    monkeypatch.setenv("CKPTHOOKS_STRICT_PLUGINS", "1")
    with pytest.raises(DuplicateContributionError) as info:
        PluginHost()
    assert info.value.plugins == ("builtin-storage", "dup-torch")


# --------------------------------------------------------------------------- essential built-ins


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_blocking_the_builtin_storage_plugin_is_refused_when_the_host_is_built(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "environment":
        monkeypatch.setenv("CKPTHOOKS_PLUGINS_BLOCK", "builtin-lightning, builtin-storage")
        build = lambda: PluginHost(load_entry_points=False)  # noqa: E731
    else:
        build = lambda: PluginHost(load_entry_points=False, block={"builtin-storage"})  # noqa: E731
    with pytest.raises(ckpthooks.ConfigurationError) as info:
        build()
    message = str(info.value)
    assert "'builtin-storage' is essential and cannot be blocked" in message
    assert "register_checkpoint_io" in message and "higher priority" in message
    assert "CKPTHOOKS_PLUGINS_BLOCK" in message


def test_other_builtin_plugins_may_still_be_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTHOOKS_PLUGINS_BLOCK", "builtin-lightning")
    host = PluginHost(load_entry_points=False)
    assert "builtin-lightning" not in names(host) and "builtin-storage" in names(host)


# --------------------------------------------------------------------------- contribution hooks go through pluggy


def test_tryfirst_and_trylast_order_contributions_before_and_after_the_plugin_order() -> None:
    host = new_host()

    def backend(name: str, **marks: bool) -> types.ModuleType:
        @hookimpl(**marks)
        def register_checkpoint_io() -> Sequence[CheckpointIOSpec]:
            return [CheckpointIOSpec(name=name, protocols=("memory",), factory=TorchCheckpointIO)]

        return module_plugin(f"ckh_{name}", register_checkpoint_io=register_checkpoint_io)

    host.register(backend("late", trylast=True), "a-late")
    host.register(backend("plain"), "b-plain")
    host.register(backend("early", tryfirst=True), "c-early")
    specs = [(plugin, spec.name) for plugin, spec in host.checkpoint_io_specs()]
    assert specs == [("c-early", "early"), ("builtin-storage", "torch"), ("b-plain", "plain"), ("a-late", "late")]
    # so the tryfirst spec wins a priority tie over the built-in torch backend
    assert host.checkpoint_io_specs()[0][0] == "c-early"


def test_tryfirst_state_components_come_first_in_the_checkpoint(tmp_path: Path) -> None:
    host = new_host()

    @hookimpl(tryfirst=True)
    def register_state_components(checkpointer: Checkpointer) -> Sequence[StateComponent]:
        return [Component("first-of-all")]

    host.register(module_plugin("ckh_first", register_state_components=register_state_components), "first")
    [(plugin, component), *_] = host.state_components(checkpointer(host, tmp_path))
    assert (plugin, component.name) == ("first", "first-of-all")


def test_pluggy_tracing_sees_every_contribution_hook_call(tmp_path: Path) -> None:
    import click

    host = new_host()

    @hookimpl
    def register_cli_commands() -> Sequence[click.Command]:
        return [click.Command("hello", callback=lambda: None)]

    host.register(module_plugin("ckh_hello", register_cli_commands=register_cli_commands), "hello")
    lines: list[str] = []
    host.pm.trace.root.setwriter(lines.append)
    undo = host.pm.enable_tracing()
    try:
        host.checkpoint_io_specs()
        host.state_components(checkpointer(host, tmp_path))
        host.cli_commands()
    finally:
        undo()
    traced = "".join(lines)
    for hook in ("register_checkpoint_io", "register_state_components", "register_policies", "register_cli_commands"):
        assert f"{hook} [hook]" in traced, hook


def test_hook_call_monitoring_sees_which_plugin_each_contribution_came_from() -> None:
    host = new_host()
    calls: list[tuple[str, list[str]]] = []

    def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        calls.append((hook_name, [impl.plugin_name for impl in impls]))

    undo = host.pm.add_hookcall_monitoring(before, lambda *args: None)
    try:
        host.checkpoint_io_specs()
    finally:
        undo()
    assert calls == [("register_checkpoint_io", ["builtin-storage"])]
