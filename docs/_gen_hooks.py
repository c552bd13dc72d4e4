"""Build-time page generation for the docs site (an MkDocs hook, listed under ``hooks:`` in mkdocs.yml).

* ``hooks-reference.md`` is generated from :mod:`ckpthooks.hookspecs` on every build: the hook
  specification's docstrings are the reference, so the page can never be stale and is not kept in
  the repository. ``python docs/_gen_hooks.py`` prints it for a look without building.
* Pages that the nav lists but that are still being written elsewhere (see ``PENDING``) get a short
  placeholder, so that ``mkdocs build --strict`` passes; once the real file exists it is used.

``tests/test_docs.py`` checks that every hook has a docstring and a section in the hand-written
guide ``docs/hooks.md``, and that this generator renders every hook.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GENERATED = "hooks-reference.md"

#: nav pages being written by others: src path -> (title, what the page will hold)
PENDING: dict[str, tuple[str, str]] = {
    "distributed.md": ("Distributed training", "DDP, sharded checkpoints and rank guards"),
    "xla.md": ("XLA and TPUs", "the ckpthooks-xla plugin"),
    "coming-from-lightning.md": ("Coming from Lightning", "moving a Lightning project's checkpoints to ckpthooks"),
}


def hook_specs() -> dict[str, Any]:
    """Every hook specification in :mod:`ckpthooks.hookspecs`, in source order."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from ckpthooks import hookspecs

    marker = f"{hookspecs.PROJECT_NAME}_spec"
    specs = {name: value for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, marker)}
    return dict(sorted(specs.items(), key=lambda item: inspect.getsourcelines(item[1])[1]))


def render() -> str:
    from ckpthooks import hookspecs

    lines = [
        "# Hook reference",
        "",
        "<!-- Generated from ckpthooks/hookspecs.py by docs/_gen_hooks.py at build time; do not edit. -->",
        "",
        "This page is generated from the docstrings of the hook specification, `ckpthooks.hookspecs`. "
        "The [hook guide](hooks.md) explains each hook with a complete example plugin.",
        "",
        "## Rules for every hook",
        "",
        _markdown(inspect.getdoc(hookspecs) or ""),
        "",
        "## Summary",
        "",
        "| hook | first result wins | returns |",
        "| --- | --- | --- |",
    ]
    specs = hook_specs()
    guide = (ROOT / "docs" / "hooks.md").read_text()
    for name, function in specs.items():
        opts = getattr(function, f"{hookspecs.PROJECT_NAME}_spec")
        returns = str(inspect.signature(function).return_annotation).replace("|", "\\|")
        lines.append(f"| [`{name}`](#{name}) | {'yes' if opts.get('firstresult') else 'no'} | `{returns}` |")
    for name, function in specs.items():
        opts = getattr(function, f"{hookspecs.PROJECT_NAME}_spec")
        flags = [flag for flag in ("firstresult", "historic", "warn_on_impl") if opts.get(flag)]
        lines += [
            "",
            f"## `{name}`",
            "",
            "```python",
            f"@hookspec{'(' + ', '.join(f'{flag}=True' for flag in flags) + ')' if flags else ''}",
            f"def {name}{_signature(function)}",
            "```",
            "",
            _markdown(inspect.getdoc(function) or "**Undocumented.**"),
        ]
        params = list(inspect.signature(function).parameters)
        if params:
            lines += ["", "Parameters: " + ", ".join(f"`{p}`" for p in params) + "."]
        if f"## `{name}`" in guide:
            lines += ["", f"Guide with an example: [hooks.md#{name}](hooks.md#{name})."]
    lines += plugin_api()
    return "\n".join(lines) + "\n"


def plugin_api() -> list[str]:
    """The section on :mod:`ckpthooks.plugin`, from its ``__all__`` and ``DOCUMENTATION``."""
    import ckpthooks.plugin as api

    lines = [
        "",
        "## The plugin API: `ckpthooks.plugin`",
        "",
        _markdown(inspect.getdoc(api) or ""),
        "",
        "| name | what it is |",
        "| --- | --- |",
    ]
    for name in sorted(api.__all__, key=str.lower):
        _module, _attribute, line = api.DOCUMENTATION[name]
        lines.append(f"| `ckpthooks.plugin.{name}` | {line.replace('|', chr(92) + '|')} |")
    return lines


def _signature(function: Any) -> str:
    """The signature as written in the source (annotations are strings there: no quotes around them)."""
    signature = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"({params}) -> {signature.return_annotation}"


def _role(match: re.Match[str]) -> str:
    target = match.group(1)
    return f"`{target[1:].split('.')[-1]}`" if target.startswith("~") else f"`{target}`"


def _markdown(text: str) -> str:
    """reStructuredText roles and literals of the docstrings as Markdown."""
    text = re.sub(r":(?:class|func|meth|mod|data|attr|exc):`([^`]+)`", _role, text)
    text = text.replace("``", "`")
    text = re.sub(r"::\n", ":\n", text)
    out: list[str] = []
    code = False
    for line in text.splitlines():
        indented = line.startswith("    ")
        if indented and not code and (not out or out[-1] == ""):
            out.append("```")
            code = True
        elif code and not indented and line.strip():
            while out and out[-1] == "":
                out.pop()
            out.append("```")
            out.append("")
            code = False
        out.append(line[4:] if code and indented else line)
    if code:
        while out and out[-1] == "":
            out.pop()
        out.append("```")
    return "\n".join(out)


# --------------------------------------------------------------------------- MkDocs hook


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    existing = files.get_file_from_path(GENERATED)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, GENERATED, content=render()))
    for src, (title, subject) in PENDING.items():
        if files.get_file_from_path(src) is None:
            content = f"# {title}\n\nThis page, on {subject}, is being written. See the [changelog](changelog.md).\n"
            files.append(File.generated(config, src, content=content))
    return files


if __name__ == "__main__":
    sys.stdout.write(render())
