"""Wall time of the ``ckpthooks`` console script against bare interpreter starts.

Each command runs once untimed (bytecode caches, page cache), then ``reps`` times.

    python -m benchmarks.cli_startup --size quick --workdir /tmp/x --out /tmp/x/cli.json
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, progress, section_args, write_json


def commands() -> dict[str, list[str]]:
    script = Path(sys.executable).with_name("ckpthooks")
    return {
        "python_pass": [sys.executable, "-c", "pass"],
        "import_ckpthooks": [sys.executable, "-c", "import ckpthooks"],
        "ckpthooks_plugins": [str(script), "plugins"],
        "ckpthooks_help": [str(script), "--help"],
    }


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, check=False, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return seconds


def main() -> None:
    args = section_args(__doc__ or "")
    reps = max(args.config["reps"], 5)  # cheap: always at least 5
    progress(f"command line start-up ({reps} runs each)")
    cmds = commands()
    result: dict[str, Any] = {"reps": reps, "commands": {k: " ".join(v) for k, v in cmds.items()}, "seconds": {}}
    for cmd in cmds.values():
        timed(cmd)
    for name in cmds:
        result["seconds"][name] = []
    for _ in range(reps):
        for name, cmd in cmds.items():
            result["seconds"][name].append(timed(cmd))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
