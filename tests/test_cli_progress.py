"""Progress bars: on stderr only, only for long work on a terminal (or when asked), never in JSON."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ckpthooks._cli import common
from ckpthooks._cli.common import Progress
from tests.cli_helpers import run_cli, train


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    with Progress(100, "working", delay=0.0) as bar:
        bar.update(100)
    assert stderr.getvalue() == ""


def test_on_a_terminal_the_bar_appears_only_after_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = FakeTerminal()
    monkeypatch.setattr("sys.stderr", stderr)
    clock = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    with Progress(1000, "working", delay=1.0) as bar:
        bar.update(100)
        assert stderr.getvalue() == ""  # quick work prints nothing
        clock[0] = 2.0
        bar.update(100)
        assert "working" in stderr.getvalue()


def test_json_output_never_gets_an_automatic_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    assert Progress(10, "x", as_json=True).enabled is False
    assert Progress(10, "x", enabled=True, as_json=True).enabled is True  # --progress asks for it


def test_verify_progress_goes_to_stderr(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.2])
    result = run_cli("verify", str(tmp_path), "--json", "--progress")
    assert result.exit_code == 0, result.output
    assert "verifying" in result.stderr
    assert all(record["ok"] for record in json.loads(result.stdout)["results"])
    assert run_cli("verify", str(tmp_path), "--no-progress").stderr == ""
