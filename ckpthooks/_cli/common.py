"""What every command shares: exit codes, JSON output, storage options, sizes, ages, the progress bar."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from ckpthooks._plugin_host import PluginHost

#: The command did what was asked (also a dry run, an empty listing).
EXIT_OK = 0
#: Something checked or attempted failed; the output says what.
EXIT_FAILURE = 1
#: Bad usage: an unknown command or option, a missing or invalid argument (click's own code).
EXIT_USAGE = 2

F = TypeVar("F", bound=Callable[..., Any])


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout instead of text.")(function)


def progress_option(function: F) -> F:
    return click.option(
        "--progress/--no-progress",
        "progress",
        default=None,
        help="Show a progress bar on stderr. Default: only when stderr is a terminal, the output is not "
        "--json, and the work takes more than a second.",
    )(function)


def storage_option(function: F) -> F:
    return click.option(
        "--storage-option",
        "-o",
        "storage_option_args",
        multiple=True,
        metavar="KEY=VALUE",
        help="An fsspec storage option (repeatable); VALUE is parsed as JSON when it is valid JSON, "
        "e.g. -o key=ID -o secret=SECRET -o 'client_kwargs={\"endpoint_url\": \"http://127.0.0.1:9000\"}'.",
    )(function)


def parse_storage_options(args: tuple[str, ...], hint: str = "--storage-option") -> dict[str, Any] | None:
    """``KEY=VALUE`` pairs as a dict; values that parse as JSON are taken as JSON."""
    options: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {arg!r}", param_hint=hint)
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options or None


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(plain(payload), indent=2))


def plain(value: Any) -> Any:
    """``value`` as strict JSON data: non-finite floats become strings, tuples lists, other types text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    return str(value)


def printable(text: str) -> str:
    """``text`` as valid Unicode: bytes of a file name that are not UTF-8 (which Python decodes to
    lone surrogates, ``os.fsdecode(b"ckpt-\\xff.ckpt")``) become ``\\xff`` escapes, so the text can
    be printed, or stored where only UTF-8 goes (safetensors metadata), without UnicodeEncodeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def echo(message: str, err: bool = False) -> None:
    """``click.echo`` of :func:`printable` text: a non-UTF-8 file name never makes a command fail."""
    click.echo(printable(message), err=err)


def error(message: str) -> None:
    echo(f"error: {message}", err=True)


def fail(message: str) -> None:
    """Report ``message`` on stderr and exit with :data:`EXIT_FAILURE`."""
    error(message)
    sys.exit(EXIT_FAILURE)


def describe_error(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for limit, unit in ((60, "s"), (3600, "min"), (86400, "h")):
        if seconds < limit:
            divisor = {"s": 1, "min": 60, "h": 3600}[unit]
            return f"{int(seconds // divisor)} {unit} ago"
    return f"{int(seconds // 86400)} d ago"


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in sorted(metrics.items())) or "-"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers) - 1)]
    lines = []
    for row in [headers, *rows]:
        cells = [str(cell).ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return "\n".join(lines)


def plugin_host() -> PluginHost:
    """The shared plugin host; a plugin that failed to load is reported on one stderr line, not as a
    Python warning with a source line."""
    from ckpthooks._plugin_host import get_plugin_host

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        host = get_plugin_host()
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)
    return host


class Progress:
    """A byte-counting progress report on stderr that appears only when the work turns out to be long.

    ``enabled=None`` (the default of ``--progress/--no-progress``) shows it when stderr is a
    terminal and the output is not JSON, and only once the work has run for ``delay`` seconds, so
    quick commands print nothing extra. ``enabled=True`` shows it at once; ``False`` never. On a
    terminal it is a bar redrawn in place; into a pipe or a log file, a line with the percentage
    and the bytes every :attr:`LINE_INTERVAL` seconds, and one at the end.
    """

    #: seconds between two progress lines when stderr is not a terminal
    LINE_INTERVAL = 2.0

    def __init__(
        self, total: int, label: str, *, enabled: bool | None = None, as_json: bool = False, delay: float = 1.0
    ) -> None:
        self.total = max(int(total), 0)
        self.label = label
        if enabled is None:
            enabled = not as_json and _stderr_is_a_terminal()
            self.delay = delay
        else:
            self.delay = 0.0
        self.enabled = enabled
        self.done = 0
        self._started = time.monotonic()
        self._bar: Any = None
        self._lines = False  # reporting as lines (stderr is not a terminal)
        self._last_line = 0.0

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        if self.enabled and self.delay <= 0:
            self._open()
        return self

    def update(self, amount: int) -> None:
        self.done += amount
        if not self.enabled:
            return
        if self._bar is None and not self._lines:
            if time.monotonic() - self._started < self.delay:
                return
            self._open()
        elif self._lines:
            if time.monotonic() - self._last_line >= self.LINE_INTERVAL:
                self._line()
        else:
            self._bar.update(amount)

    def _line(self) -> None:
        percent = 100 * self.done // self.total if self.total else 100
        click.echo(f"{self.label}: {percent}% {human_size(self.done)} of {human_size(self.total)}", err=True)
        self._last_line = time.monotonic()

    def _open(self) -> None:
        if not _stderr_is_a_terminal():
            self._lines = True
            self._line()
            return
        length = max(self.total, 1)
        bar: Any = click.progressbar(
            length=length,
            label=self.label,
            file=sys.stderr,
            show_percent=True,
            show_eta=True,
            # the bar's own position, so that the bytes and the percentage of a frame always agree
            item_show_func=lambda _: f"{human_size(bar.pos)} of {human_size(self.total)}",
        )
        bar.pos = min(self.done, length)  # the first frame shows what is done already
        self._bar = bar
        bar.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._lines:
            if kind is None:
                self._line()
            self._lines = False
        if self._bar is not None:
            self._bar.__exit__(kind, exc, traceback)
            self._bar = None


def _stderr_is_a_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False
