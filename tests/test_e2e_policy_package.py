"""A policy from a separately installed package, found through its entry point, decides when to save."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ckpthooks import Checkpointer
from ckpthooks._catalog import read_manifest
from ckpthooks._plugin_host import PluginHost
from ckpthooks.testing.packaging import on_sys_path, pip_install_target
from tests.helpers import TinyNet

PACKAGE = Path(__file__).parent / "fixtures" / "ckpthooks-fixture-policy"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    site = pip_install_target([PACKAGE], tmp_path_factory.mktemp("policy-package"))
    with on_sys_path(site, "ckpthooks_fixture_policy"):
        yield site


def test_an_installed_policy_decides_when_to_save(installed: Path, tmp_path: Path) -> None:
    host = PluginHost(allow={"every-third-step"})
    info = {p.name: p for p in host.plugins()}["every-third-step"]
    assert (info.source, info.distribution, info.version) == ("entrypoint", "ckpthooks-fixture-policy", "0.4.0")
    assert info.hooks == ("register_policies",)

    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, plugin_host=host)
    assert [type(cb).__name__ for cb in ckpt.callbacks] == ["EveryThirdStep"]
    ckpt.track(model=TinyNet())
    ckpt.fit(lambda epoch: [None for _ in ckpt.batches(range(4))], max_epochs=2)

    saved = sorted(p.name for p in (tmp_path / "policy").glob("*.ckpt"))
    assert saved == ["step=3.ckpt", "step=6.ckpt"]
    manifest = read_manifest(str(tmp_path / "policy" / "step=6.ckpt"))
    assert manifest is not None and manifest.writer == "EveryThirdStep" and manifest.global_step == 6
    assert manifest.plugins["every-third-step"] == "0.4.0"


def test_blocking_the_policy_package_stops_its_saves(installed: Path, tmp_path: Path) -> None:
    host = PluginHost(allow={"every-third-step"}, block={"every-third-step"})
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, plugin_host=host)
    ckpt.track(model=TinyNet())
    ckpt.fit(lambda epoch: [None for _ in ckpt.batches(range(4))], max_epochs=1)
    assert not (tmp_path / "policy").exists()
