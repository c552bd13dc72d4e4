"""Crash consistency: SIGKILL a training process during saves, commits and pruning; check what is left.

See docs/crash-consistency.md. Each *chain* trains into a fresh root with tests/crash_worker.py and
kills it several times in a row (one *trial* per kill), resuming every time with ``ckpt_path="last"``;
a clean run ends the chain. Most kills are tripwires (the worker SIGKILLs itself on the N-th call of
a chosen operation, before or after it), the others come after a random delay. After every run:

(a) the next run resumes from the newest committed checkpoint (by the manifests), or starts fresh;
(b) every manifest on disk is valid and its checkpoint verifies (size and checksum);
(c) no temporary file survives the start of the next run;
(d) top-k holds at most ``save_top_k`` committed files (see :func:`check_state` for the two
    documented exceptions) and there is one committed ``last`` file;
(e) listing the committed checkpoints through the commit index gives what reading every manifest
    gives.

    CKPTHOOKS_CRASH_TRIALS=100 .venv/bin/python -m pytest tests/test_crash_consistency.py -m crash

Replay a failure with the seed it printed: ``CKPTHOOKS_CRASH_SEED=<seed>``, and
``CKPTHOOKS_CRASH_CHAIN=<i>`` to run only the failing chain (tripwire choices replay exactly;
random-delay kills land where the timing puts them).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ckpthooks import ModelCheckpoint
from ckpthooks._catalog import iter_committed, read_manifest, verify_checkpoint
from ckpthooks._commit_index import INDEX_NAME
from ckpthooks._io.durable import is_temp_name
from ckpthooks._manifest import MANIFEST_SUFFIX, Manifest
from ckpthooks.exceptions import CheckpointError

WORKER = Path(__file__).resolve().parent / "crash_worker.py"
TRIALS = int(os.environ.get("CKPTHOOKS_CRASH_TRIALS", "20"))
SEED = int(os.environ.get("CKPTHOOKS_CRASH_SEED") or random.SystemRandom().randrange(10**9))
ONLY_CHAIN = os.environ.get("CKPTHOOKS_CRASH_CHAIN")
KILLS_PER_CHAIN = 5
PARALLEL = 2
#: steps a run may train past its resume point before it stops on its own (when no kill came)
STEPS_PER_RUN = 12
TIMEOUT = 120.0
#: the operations the worker can trip on (crash_worker.OPERATIONS)
OPERATIONS = (
    "os.replace", "os.fsync", "os.remove", "os.rename", "os.link",
    "write_manifest", "remove_manifest", "record_commit", "CheckpointStore.remove",
)


def state_key() -> str:
    return ModelCheckpoint(monitor="loss", every_n_train_steps=1).state_key  # the worker's policy: a step trigger


# ---------------------------------------------------------------------------------------- processes


class Zygote:
    """A ``crash_worker.py --serve`` fork server: each run is a forked child (torch imported once)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            bufsize=1,
        )

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the crash worker's fork server died (exit code {self.proc.poll()})")
        return line.strip()

    def run(self, argv: list[str], stderr: Path, plan: dict[str, Any], report: Path) -> int:
        """Run ``crash_worker.main(argv)`` in a child; kill it as ``plan`` says; return its exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "stderr": str(stderr)}) + "\n")
        pid = int(self._line())
        watchdog = threading.Timer(TIMEOUT, lambda: _kill(pid))
        watchdog.start()
        try:
            if "delay" in plan:
                began = time.monotonic()
                if plan["from"] == "ready":  # the report is written right before training starts
                    while not report.exists() and time.monotonic() - began < TIMEOUT and _alive(pid):
                        time.sleep(0.002)
                time.sleep(plan["delay"])
                _kill(pid)
            return int(self._line())
        finally:
            watchdog.cancel()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------- a chain


@dataclass
class Chain:
    index: int
    root: Path
    rng: random.Random
    top_k: int
    every: int
    save_last: str
    log: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    resumed_from: set[str] = field(default_factory=set)
    fired: list[str] = field(default_factory=list)
    max_lost_steps: int = 0
    max_orphans: int = 0

    def argv(self, steps: int, tag: str, tripwire: str | None) -> list[str]:
        argv = [
            "--root", str(self.root), "--steps", str(steps), "--top-k", str(self.top_k), "--every", str(self.every),
            "--save-last", self.save_last, "--report", str(self.report(tag)), "--events", str(self.events),
        ]
        return [*argv, "--tripwire", tripwire] if tripwire else argv

    def report(self, tag: str) -> Path:
        return self.root.parent / f"report-{tag}.json"

    @property
    def events(self) -> Path:
        return self.root.parent / "events.jsonl"

    def describe(self) -> str:
        lines = [
            f"chain {self.index}: root {self.root}, save_top_k={self.top_k}, every_n_train_steps={self.every}, "
            f"save_last={self.save_last}"
        ]
        lines += [f"  {json.dumps(entry, sort_keys=True)}" for entry in self.log]
        return "\n".join(lines)


def committed(root: Path) -> list[tuple[str, Manifest | None]]:
    """Every manifest file under ``root`` (hidden ones too: a kept previous version has one), with
    the manifest it holds, or ``None`` when it is not a valid manifest of its checkpoint."""
    found: list[tuple[str, Manifest | None]] = []
    for manifest_file in sorted(root.rglob("*" + MANIFEST_SUFFIX)):
        if is_temp_name(manifest_file.name):
            continue
        path = str(manifest_file)[: -len(MANIFEST_SUFFIX)]
        found.append((path, read_manifest(path)))
    return found


def newest(items: list[tuple[str, Manifest]]) -> tuple[int, set[str]] | None:
    """The global step of the newest committed checkpoint and the paths "last" may pick for it
    (the latest created at that step; a linked ``last`` shares its top-k file's manifest time)."""
    if not items:
        return None
    top = max(m.global_step for _, m in items)
    at_top = [(p, m) for p, m in items if m.global_step == top]
    latest = max(m.created for _, m in at_top)
    return top, {p for p, m in at_top if m.created == latest}


def check_state(chain: Chain, where: str, *, killed: bool, resumed_from: set[str]) -> list[tuple[str, Manifest]]:
    """Invariants (b) and (d) on what is on disk now; returns the committed checkpoints.

    Top-k holds at most ``save_top_k`` committed files, plus: one displaced file whose deletion a
    kill interrupted (its replacement is committed first; the next run deletes it), and the files in
    ``resumed_from`` (a run never deletes the file it resumed from; a later run does). One committed
    ``last``, plus its hidden previous version (``.last.ckpt.ckpthooks-prev``) while it is rewritten
    or when a run resumed from that.
    """
    good: list[tuple[str, Manifest]] = []
    for path, manifest in committed(chain.root):
        if manifest is None:
            chain.failures.append(f"{where}: {path}{MANIFEST_SUFFIX} is not a valid manifest of {path}")
            continue
        try:
            verify_checkpoint(path, manifest, "full")
        except CheckpointError as exc:
            chain.failures.append(f"{where}: committed {path} does not verify: {exc}")
        good.append((path, manifest))
    key = state_key()
    visible = [(p, m) for p, m in good if not Path(p).name.startswith(".")]
    hidden = [p for p, m in good if Path(p).name.startswith(".")]
    topk = sorted(p for p, m in visible if m.writer == f"{key}#topk")
    last = sorted(p for p, m in visible if m.writer == f"{key}#last")
    allowed = chain.top_k + int(killed) + len([p for p in topk if p in resumed_from])
    if len(topk) > allowed:
        chain.failures.append(
            f"{where}: {len(topk)} committed top-k files for save_top_k={chain.top_k} (at most {allowed} "
            f"allowed; resumed from {sorted(Path(p).name for p in resumed_from)}): {[Path(p).name for p in topk]}"
        )
    if len(last) > 1:
        chain.failures.append(f"{where}: {len(last)} committed 'last' files: {last}")
    stale_hidden = [p for p in hidden if not killed and p not in resumed_from]
    if stale_hidden:
        chain.failures.append(f"{where}: hidden committed files outlived a clean run: {stale_hidden}")
    strangers = [p for p, m in good if not (m.writer or "").startswith(key + "#")]
    if strangers:
        chain.failures.append(f"{where}: committed files not written by the policy: {strangers}")
    through_index = {item.path: item.manifest for item in iter_committed(str(chain.root))}
    if through_index != dict(good):
        chain.failures.append(
            f"{where}: the listing through the commit index differs from the manifests: "
            f"{sorted(through_index.items())} != {sorted(good)}"
        )
    return good


def orphaned_data(root: Path) -> int:
    """Files that are neither temporary, nor manifests, nor committed: left when a kill came between
    uncommitting and deleting, or between the data's rename and its manifest. Never loaded."""
    return sum(
        1
        for p in root.rglob("*")
        if p.is_file()
        and not is_temp_name(p.name)
        and p.name != INDEX_NAME
        and not p.name.endswith(MANIFEST_SUFFIX)
        and not Path(str(p) + MANIFEST_SUFFIX).exists()
    )


def temp_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if is_temp_name(p.name))


def last_commit(chain: Chain) -> int | None:
    if not chain.events.exists():
        return None
    steps = [json.loads(line)["step"] for line in chain.events.read_text().splitlines() if '"commit"' in line]
    return max(steps) if steps else None


def plan_kill(chain: Chain, rates: dict[str, float]) -> dict[str, Any]:
    """A random kill: after a random delay (a quarter of the trials) or a tripwire."""
    rng = chain.rng
    if rng.random() < 0.25:
        if rng.random() < 0.25:  # during start-up: construction (removal of leftovers) and restore
            return {"from": "start", "delay": round(rng.uniform(0.0, 0.3), 3)}
        return {"from": "ready", "delay": round(rng.uniform(0.0, 0.05 * STEPS_PER_RUN), 3)}
    op = rng.choice(sorted(op for op, rate in rates.items() if rate > 0))
    high = max(1, round(rates[op] * STEPS_PER_RUN / chain.every))
    return {"tripwire": f"{op}:{rng.randint(1, high)}:{rng.choice(('before', 'after'))}"}


def check_start(chain: Chain, where: str, start: dict[str, Any] | None, expected: tuple[int, set[str]] | None) -> None:
    """Invariants (a) and (c) on the report of a run that has just started."""
    if start is None:
        return  # killed before it reported (during construction or restore): the next run is checked
    if start["temps_after_start"]:
        chain.failures.append(f"{where}: temporary files survived the start: {start['temps_after_start']}")
    restore = start["restore"]
    if expected is None:
        if restore is not None:
            chain.failures.append(f"{where}: nothing was committed, yet the run restored {restore}")
        return
    step, candidates = expected
    if restore is None:
        chain.failures.append(f"{where}: expected a resume from {sorted(candidates)} (step {step}), got a fresh start")
        return
    if restore["global_step"] != step or restore["path"] not in candidates:
        chain.failures.append(
            f"{where}: expected a resume from {sorted(candidates)} at step {step}, got {restore['path']} "
            f"at step {restore['global_step']}"
        )
    chain.resumed_from.add(restore["path"])


def run_chain(index: int, kills: int, base: Path, zygote: Zygote, rates: dict[str, float]) -> Chain:
    rng = random.Random(f"{SEED}-{index}")
    root = base / f"chain{index}" / "run"
    root.mkdir(parents=True)
    chain = Chain(
        index=index, root=root, rng=rng, top_k=rng.choice((1, 2, 3)), every=rng.choice((1, 2)),
        save_last=rng.choice(("true", "true", "link")),
    )
    expected: tuple[int, set[str]] | None = None
    for trial in range(kills + 1):
        final = trial == kills
        plan = {} if final else plan_kill(chain, rates)
        steps = (expected[0] if expected else 0) + (2 * chain.every if final else STEPS_PER_RUN)
        where = f"chain {index} trial {trial} ({plan or 'clean run'})"
        began = time.monotonic()
        tag = str(trial)
        stderr = root.parent / f"stderr-{tag}.txt"
        code = zygote.run(chain.argv(steps, tag, plan.get("tripwire")), stderr, plan, chain.report(tag))
        killed = code == -signal.SIGKILL
        entry: dict[str, Any] = {"trial": trial, "plan": plan or "clean run", "steps": steps, "exit": code,
                                 "seconds": round(time.monotonic() - began, 2)}
        chain.log.append(entry)
        start = json.loads(chain.report(tag).read_text()) if chain.report(tag).exists() else None
        check_start(chain, where, start, expected)
        entry["restored"] = start["restore"] if start else "(no report)"
        if code not in (0, -signal.SIGKILL) or (final and killed):
            chain.failures.append(f"{where}: the worker failed with exit code {code}:\n{stderr.read_text()[-3000:]}")
            break
        if killed and plan.get("tripwire"):
            chain.fired.append(plan["tripwire"])
        this_run = {start["restore"]["path"]} if start and start["restore"] else set()
        items = check_state(
            chain, where + " after the run", killed=killed, resumed_from=chain.resumed_from if killed else this_run
        )
        expected = newest(items)
        entry.update(killed=killed, newest=None if expected is None else expected[0], orphans=orphaned_data(root))
        chain.max_orphans = max(chain.max_orphans, entry["orphans"])
        seen = last_commit(chain)
        if seen is not None and expected is not None:
            chain.max_lost_steps = max(chain.max_lost_steps, seen - expected[0])
        if chain.failures:
            break
    if not chain.failures:
        leftovers = temp_files(root)
        if leftovers:
            chain.failures.append(f"chain {index}: temporary files after the clean run: {leftovers}")
        cli = subprocess.run(
            [sys.executable, "-m", "ckpthooks.cli", "verify", str(root)], capture_output=True, text=True,
            timeout=TIMEOUT,
        )
        if cli.returncode != 0:
            chain.failures.append(f"chain {index}: ckpthooks verify failed:\n{cli.stdout}{cli.stderr}")
    return chain


def calibrate(base: Path, zygote: Zygote) -> dict[str, float]:
    """Calls per training step of every operation, from one clean run: tripwire positions are drawn
    from [1, rate * STEPS_PER_RUN] so that most tripwires fire."""
    chain = Chain(index=-1, root=base / "calibration" / "run", rng=random.Random(0), top_k=2, every=1, save_last="link")
    chain.root.mkdir(parents=True)
    steps = 10
    stderr = chain.root.parent / "stderr.txt"
    code = zygote.run(chain.argv(steps, "calibration", None), stderr, {}, chain.report("calibration"))
    assert code == 0, stderr.read_text()
    done = [json.loads(line) for line in chain.events.read_text().splitlines() if '"done"' in line][-1]
    return {op: done["calls"][op] / steps for op in OPERATIONS}


@pytest.mark.crash
@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_a_consistent_store(tmp_path: Path) -> None:
    chains = [
        (i, min(KILLS_PER_CHAIN, TRIALS - i * KILLS_PER_CHAIN))
        for i in range((TRIALS + KILLS_PER_CHAIN - 1) // KILLS_PER_CHAIN)
    ]
    if ONLY_CHAIN is not None:
        chains = [c for c in chains if c[0] == int(ONLY_CHAIN)]
    began = time.monotonic()
    zygotes: queue.Queue[Zygote] = queue.Queue()
    for _ in range(min(PARALLEL, len(chains))):
        zygotes.put(Zygote())
    try:
        zygote = zygotes.get()
        rates = calibrate(tmp_path, zygote)
        zygotes.put(zygote)

        def one(chain: tuple[int, int]) -> Chain:
            zygote = zygotes.get()
            try:
                return run_chain(chain[0], chain[1], tmp_path, zygote, rates)
            finally:
                zygotes.put(zygote)

        with ThreadPoolExecutor(PARALLEL) as pool:
            results = list(pool.map(one, chains))
    finally:
        while not zygotes.empty():
            zygotes.get().close()
    elapsed = time.monotonic() - began
    kills = sum(1 for c in results for e in c.log if e.get("killed"))
    fired = sorted({f"{t.split(':')[0]}:{t.split(':')[2]}" for c in results for t in c.fired})
    never = sorted(op for op, rate in rates.items() if rate == 0)
    lost = max((c.max_lost_steps for c in results), default=0)
    print(
        f"\ncrash harness: seed {SEED}, {sum(n for _, n in chains)} trials in {len(chains)} chains, {kills} kills, "
        f"{elapsed:.1f} s; calls per step {rates}; never called by the library: {never}; tripwires fired: "
        f"{', '.join(fired)}; most steps of progress lost by a kill: {lost}; "
        f"most uncommitted files left: {max((c.max_orphans for c in results), default=0)}"
    )
    failed = [c for c in results if c.failures]
    if failed:
        text = "\n\n".join("\n".join(c.failures) + "\n" + c.describe() for c in failed)
        pytest.fail(f"crash consistency violated (replay with CKPTHOOKS_CRASH_SEED={SEED}):\n{text}", pytrace=False)


# ---------------------------------------------------------------------------------------- regressions


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after the raise runs, no handler catches it."""


def _topk_files(root: Path) -> list[str]:
    return sorted(Path(p).name for p, m in committed(root) if m is not None and (m.writer or "").endswith("#topk"))


def test_a_kill_between_commit_and_pruning_is_finished_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the harness: a kill after a new top-k file was committed but before the file it
    displaced was deleted left that file committed forever (the resumed state no longer listed it),
    so every such crash added one file beyond save_top_k. The displaced path is now saved with the
    policy's state and the next run deletes it; a run's own resume file is deleted by a later run."""
    import torch

    from ckpthooks import Checkpointer
    from ckpthooks._store import CheckpointStore
    from tests.helpers import TinyNet

    def start() -> Checkpointer:
        torch.manual_seed(0)
        model = TinyNet()
        policy = ModelCheckpoint(monitor="loss", save_top_k=1, save_last=True, every_n_train_steps=1, filename="{step}")
        ckpt = Checkpointer(tmp_path, callbacks=[policy])
        ckpt.track(model=model, optimizers=torch.optim.AdamW(model.parameters()))
        ckpt.restore("last")
        ckpt.fit_start()
        return ckpt

    def step(ckpt: Checkpointer, loss: float) -> None:
        ckpt.log("loss", loss)
        ckpt.step_end()

    ckpt = start()
    step(ckpt, 3.0)
    real_remove = CheckpointStore.remove

    def killed_remove(self: CheckpointStore, path: str) -> None:
        raise Killed

    monkeypatch.setattr(CheckpointStore, "remove", killed_remove)
    with pytest.raises(Killed):
        step(ckpt, 2.0)  # step=2 is committed, then the "kill" comes before step=1 is deleted
    monkeypatch.setattr(CheckpointStore, "remove", real_remove)
    assert _topk_files(tmp_path) == ["step=1.ckpt", "step=2.ckpt"]

    ckpt = start()  # resumes from step=2.ckpt, the newest committed file
    assert ckpt.resumed_from is not None and ckpt.resumed_from.endswith("step=2.ckpt")
    assert _topk_files(tmp_path) == ["step=2.ckpt"]  # the interrupted pruning was finished
    step(ckpt, 1.0)  # displaces step=2.ckpt, but this run resumed from it: kept
    assert _topk_files(tmp_path) == ["step=2.ckpt", "step=3.ckpt"]

    ckpt = start()  # resumes from last.ckpt (step 3): the previous run's resume file can go now
    assert ckpt.resumed_from is not None and ckpt.resumed_from.endswith("last.ckpt")
    assert _topk_files(tmp_path) == ["step=3.ckpt"]
    assert not (tmp_path / "checkpoints" / "step=1.ckpt").exists()


def test_a_resume_from_a_linked_last_keeps_writing_last(tmp_path: Path) -> None:
    """Found by the harness: with save_last="link", last.ckpt is the top-k file, whose state was
    dumped before last.ckpt was chosen. Resumed from the first one, the policy did not know its
    last file, wrote last-v1.ckpt at the next save and left last.ckpt committed beside it."""
    import torch

    from ckpthooks import Checkpointer
    from tests.helpers import TinyNet

    def start() -> Checkpointer:
        model = TinyNet()
        policy = ModelCheckpoint(
            monitor="loss", save_top_k=1, save_last="link", every_n_train_steps=1, filename="{step}"
        )
        ckpt = Checkpointer(tmp_path, callbacks=[policy])
        ckpt.track(model=model, optimizers=torch.optim.AdamW(model.parameters()))
        ckpt.restore("last")
        ckpt.fit_start()
        return ckpt

    for loss in (1.0, 0.5, 0.25):  # a new process (a kill, or a normal stop) after every step
        ckpt = start()
        ckpt.log("loss", loss)
        ckpt.step_end()
    lasts = sorted(Path(p).name for p, m in committed(tmp_path) if m is not None and m.writer.endswith("#last"))
    assert lasts == ["last.ckpt"]
    assert _topk_files(tmp_path) == ["step=3.ckpt"]
