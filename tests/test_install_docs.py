"""Install instructions tell the truth: ckpthooks and its plugins are not on a package index, so no
`pip install` in the docs, READMEs or examples names them as a package to fetch (a command that
fails today, and would install a stranger's package if someone registered the name). The working
forms install from the repository (`pip install .`, `pip install ./plugins/<name>`, an editable
install) or from a local `dist/` folder (`--find-links`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the distributions of this repository (none is on a package index)
OURS = {
    "ckpthooks", "ckpthooks-safetensors", "ckpthooks-dcp", "ckpthooks-xla",
    "ckpthooks-example-plugin", "ckpthooks-example-storage",
}  # fmt: skip
COMMAND = re.compile(r"pip install ([^`\n|)]+)")


def _sources() -> list[Path]:
    found = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    found += sorted(REPO.glob("plugins/*/README.md")) + sorted(REPO.glob("examples/**/README.md"))
    found += sorted((REPO / "examples").rglob("*.py")) + sorted((REPO / "ckpthooks").rglob("*.py"))
    return [p for p in found if p.name != "changelog.md"]  # the changelog records history


def _problems(text: str) -> list[str]:
    problems = []
    for match in COMMAND.finditer(text):
        line = match.group(1).split("#", 1)[0].strip().rstrip(".,;:")
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        if "--find-links" in words or any(w.startswith("--find-links=") for w in words):
            continue  # from a local dist/ folder
        for word in words:
            if word.startswith("-") or word.startswith((".", "/")) or "/" in word:
                continue  # options, paths (., ./plugins/x, ".[s3]")
            name = re.split(r"[\[<>=!~;\s]", word, maxsplit=1)[0].lower().replace("_", "-")
            if name in OURS:
                problems.append(f"pip install {line}")
    return problems


def test_no_install_instruction_fetches_one_of_our_packages_from_an_index() -> None:
    found = {
        str(path.relative_to(REPO)): problems
        for path in _sources()
        if (problems := _problems(path.read_text(encoding="utf-8")))
    }
    assert not found, found


def test_the_check_catches_what_it_is_for() -> None:
    assert _problems("`pip install ckpthooks-safetensors`") == ["pip install ckpthooks-safetensors"]
    assert _problems("(pip install ckpthooks[s3])") == ["pip install ckpthooks[s3]"]
    assert _problems("pip install --upgrade ckpthooks") == ["pip install --upgrade ckpthooks"]
    assert _problems("pip install ckpthooks-xla torch-xla") == ["pip install ckpthooks-xla torch-xla"]
    for fine in (
        "pip install ./plugins/ckpthooks-dcp",
        'pip install ".[s3]"',
        "pip install . pytest",
        "pip install -e examples/ckpthooks-example-plugin",
        'pip install --find-links dist "ckpthooks[safetensors]"',
        "pip install s3fs",
        "pip install torch==2.13.0",
    ):
        assert _problems(fine) == [], fine
