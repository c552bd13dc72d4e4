"""The main demo: train, get killed mid-run, resume from "last", and show what was restored.

    make demo          # or: python examples/demo.py

1. Starts examples/plain_loop.py in a child process for 6 epochs.
2. As soon as a checkpoint from the middle of the third epoch is committed (the loop also saves
   every 5 steps), kills the child with SIGKILL (no clean-up, no chance to flush anything: a crash).
3. Starts the loop again with ckpt_path="last": it restores the newest committed checkpoint and
   finishes the remaining epochs.
4. Runs the same 6 epochs once more without interruption and compares: the interrupted-and-resumed
   run ends with bit-identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def committed_steps(root: Path) -> list[int]:
    steps = []
    for manifest in root.rglob("*.manifest.json"):
        try:
            steps.append(int(json.loads(manifest.read_text())["epoch"]))
        except (ValueError, KeyError, OSError):
            continue
    return steps


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="ckpthooks-demo-")) / "run"
    command = [sys.executable, str(HERE / "plain_loop.py"), "--root", str(root), "--epochs", "6"]
    print(f"== run 1: training for 6 epochs into {root}; it is killed in the middle of epoch 2")
    child = subprocess.Popen([*command, "--epoch-delay", "0.3"], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if any(epoch >= 2 for epoch in committed_steps(root)):
            break
        time.sleep(0.02)
    if child.poll() is not None:
        print("the training process ended before it could be interrupted", file=sys.stderr)
        return 1
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(f"== killed the training process with SIGKILL (exit code {child.returncode})")
    print("== committed checkpoints left behind:")
    for manifest in sorted(root.rglob("*.manifest.json")):
        data = json.loads(manifest.read_text())
        name = manifest.relative_to(root).as_posix()[: -len(".manifest.json")]
        print(f"   {name}: epoch {data['epoch']}, step {data['global_step']}")
    print('== run 2: the same command, ckpt_path="last"')
    resumed_summary = root.parent / "resumed.json"
    resumed = subprocess.run([*command, "--summary", str(resumed_summary)], check=False)
    if resumed.returncode != 0:
        return resumed.returncode
    print("== run 3: the same 6 epochs without interruption, for comparison")
    reference_summary = root.parent / "reference.json"
    reference = subprocess.run(
        [sys.executable, str(HERE / "plain_loop.py"), "--root", str(root.parent / "reference"),
         "--epochs", "6", "--summary", str(reference_summary)],
        check=False,
        stdout=subprocess.DEVNULL,
    )
    if reference.returncode != 0:
        return reference.returncode
    got = json.loads(resumed_summary.read_text())
    want = json.loads(reference_summary.read_text())
    same = got["weights_sha256"] == want["weights_sha256"] and got["global_step"] == want["global_step"]
    for label, summary in (("interrupted+resumed", got), ("uninterrupted", want)):
        print(
            f"   {label:<20} step {summary['global_step']}, val_loss {summary['val_loss']!r}, "
            f"weights {summary['weights_sha256'][:16]}"
        )
    print(
        "== the resumed run matches the uninterrupted one bit for bit" if same else "== MISMATCH: the runs differ"
    )
    shutil.rmtree(root.parent, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
