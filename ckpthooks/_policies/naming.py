"""Checkpoint file names from templates such as ``"sample-{epoch:02d}-{val_loss:.2f}"``."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ckpthooks.exceptions import ConfigurationError

JOIN_CHAR = "-"
EQUALS_CHAR = "="
EXTENSION = ".ckpt"
DEFAULT_TEMPLATE = "{epoch}" + JOIN_CHAR + "{step}"
_GROUP = re.compile(r"(\{.*?)[:\}]")
_SEPARATORS = re.compile(r"[/\\]")


def safe_metric_name(name: str) -> str:
    """``name`` with path separators replaced, so that it can never create folders."""
    return _SEPARATORS.sub("_", name)


def format_filename(
    template: str | None,
    metrics: Mapping[str, float],
    *,
    auto_insert_metric_name: bool = True,
    prefix: str = "",
    join_char: str = JOIN_CHAR,
    equals_char: str = EQUALS_CHAR,
) -> str:
    """Render ``template`` (Lightning's syntax) with ``metrics``; no extension, no folder.
    ``join_char`` joins the default template's parts and the ``prefix``; ``equals_char`` follows an
    inserted metric name (``ModelCheckpoint.CHECKPOINT_JOIN_CHAR`` / ``CHECKPOINT_EQUALS_CHAR``).

    Raises :class:`ConfigurationError` when the template names a metric that was not logged
    (Lightning silently writes 0 there).
    """
    filename = template or "{epoch}" + join_char + "{step}"
    groups = sorted(_GROUP.findall(filename), key=len, reverse=True)
    values: dict[str, float | int] = {}
    for index, group in enumerate(groups):
        name = group[1:]
        if name not in metrics:
            available = ", ".join(sorted(metrics)) or "none"
            raise ConfigurationError(
                f"the checkpoint filename template {template!r} uses {{{name}}}, but no metric "
                f"{name!r} was logged at this point (logged: {available}). Log it before the "
                "save, or remove it from the template."
            )
        slot = f"m{index}"
        shown = safe_metric_name(name)
        replacement = (shown + equals_char if auto_insert_metric_name else "") + "{" + slot
        filename = filename.replace(group, replacement)
        value = metrics[name]
        values[slot] = int(value) if _is_integral(name, value) else value
    try:
        rendered = filename.format(**values)
    except (ValueError, KeyError, IndexError) as exc:
        raise ConfigurationError(f"bad checkpoint filename template {template!r}: {exc}") from exc
    if prefix:
        rendered = prefix + join_char + rendered
    return rendered


def _is_integral(name: str, value: float) -> bool:
    return name in ("epoch", "step", "global_step") and math.isfinite(value) and float(value).is_integer()


def with_version(filename: str, version: int, join_char: str = JOIN_CHAR) -> str:
    return f"{filename}{join_char}v{version}"
