"""The Apache-2.0 text at the root, and in the wheel and the sdist of ckpthooks and of every plugin
distribution under plugins/."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECTS = [REPO, *sorted(p for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").exists())]
#: MD5 of https://www.apache.org/licenses/LICENSE-2.0.txt
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"
#: what a copy of the root project for a build leaves out (environments, outputs, caches)
IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "site", "dist", "build", "*.egg-info", "__pycache__", ".work", "plugins"
)

BUILD = """
import sys
from setuptools import build_meta
out = sys.argv[1]
print(build_meta.build_sdist(out))
print(build_meta.build_wheel(out))
"""


def test_the_root_license_is_the_apache_2_0_text() -> None:
    text = (REPO / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == APACHE_2_0_MD5
    assert b"Apache License" in text and b"Version 2.0, January 2004" in text


@pytest.mark.parametrize("project", PROJECTS[1:], ids=lambda p: p.name)
def test_every_plugin_carries_the_same_license(project: Path) -> None:
    assert (project / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_the_wheel_and_the_sdist_ship_the_license(project: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(project, source, ignore=IGNORE)  # builds write into the source tree: a copy's
    out = tmp_path / "dist"
    out.mkdir()
    built = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=source, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    license_text = (REPO / "LICENSE").read_bytes()
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
        assert "LICENSE" in members, sorted(members)
        handle = archive.extractfile(members["LICENSE"])
        assert handle is not None and handle.read() == license_text
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(names) == 1, archive.namelist()
        assert archive.read(names[0]) == license_text
