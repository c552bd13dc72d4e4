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


def test_into_a_pipe_progress_prints_periodic_lines_with_percent_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """--progress into a pipe or a log file printed the label only (click draws bars on terminals)."""
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    clock = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    with Progress(4 << 20, "verifying", enabled=True) as bar:
        for _ in range(4):
            clock[0] += 1.5
            bar.update(1 << 20)
    lines = stderr.getvalue().splitlines()
    assert lines[0] == "verifying: 0% 0 B of 4.0 MiB"
    assert "verifying: 50% 2.0 MiB of 4.0 MiB" in lines  # every LINE_INTERVAL seconds
    assert lines[-1] == "verifying: 100% 4.0 MiB of 4.0 MiB"
    assert "\r" not in stderr.getvalue()


def test_the_first_frame_of_a_late_bar_agrees_with_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bar that appears after the delay showed "0% 952.0 MiB of 1.0 GiB" in its first frame."""
    stderr = FakeTerminal()
    monkeypatch.setattr("sys.stderr", stderr)
    clock = [0.0]
    monkeypatch.setattr(common.time, "monotonic", lambda: clock[0])
    with Progress(1 << 30, "copying", delay=1.0) as bar:
        bar.update(952 << 20)  # before the delay: nothing shown
        clock[0] = 2.0
        bar.update(1 << 20)  # the bar appears now
    frames = [f for f in stderr.getvalue().replace("\r", "\n").splitlines() if "of 1.0 GiB" in f]
    assert frames, stderr.getvalue()
    assert " 0%" not in frames[0], frames[0]
    assert "93%" in frames[0] and "953.0 MiB of 1.0 GiB" in frames[0], frames[0]  # 953 MiB of 1024
