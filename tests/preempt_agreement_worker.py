"""One rank of the preemption agreement tests (run by tests/test_preemption_distributed.py; not collected).

    python tests/preempt_agreement_worker.py SCENARIOS RANK WORLD PORT WORKDIR

Joins a gloo process group on 127.0.0.1:PORT and runs each of the comma-separated SCENARIOS (see
``SCENARIOS``) in ``WORKDIR/<scenario>/``, writing ``result-RANK.json`` there. A preemption
(``SystemExit``) ends a scenario, not the process, so one process pair runs them all. The
scenario ``one_rank_fails`` ends the process instead (it leaves the other rank on its own).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.distributed as dist

from ckpthooks import Checkpointer
from ckpthooks._catalog import read_manifest

#: the collectives of torch.distributed a step could issue
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_object", "broadcast", "broadcast_object_list", "barrier")


@dataclass
class Scenario:
    #: global step during which each rank raises SIGTERM at itself (before that step's end)
    signal_at: dict[int, int] = field(default_factory=dict)
    #: a fixed number of steps between agreements (None: the default, adaptive schedule)
    fixed: int | None = None
    steps_per_epoch: int = 1000
    epochs: int = 1
    #: global step during which each rank raises RuntimeError
    fail_at: dict[int, int] = field(default_factory=dict)
    #: make torch.distributed.new_group fail
    no_group: bool = False
    #: make torch.distributed.new_group fail on this rank only, after the group was made (the
    #: other rank has a group of its own)
    no_group_on: int | None = None
    #: drive the loop by hand: fit_start, this many step_end calls, fit_end (no epoch end)
    manual_steps: int = 0
    #: how many times to run the scenario in a row (same process group)
    repeat: int = 1


SCENARIOS: dict[str, Scenario] = {
    # K = 8: a signal during step s is acted on at the end of step 8 * (ceil(s / 8) + 1)
    "phase_first_step": Scenario(signal_at={1: 1}, fixed=8),
    "phase_before_agreement": Scenario(signal_at={1: 7}, fixed=8),
    "phase_at_agreement": Scenario(signal_at={1: 8}, fixed=8),
    "phase_after_agreement": Scenario(signal_at={1: 9}, fixed=8),
    "phase_rank_zero": Scenario(signal_at={0: 13}, fixed=8),
    "both_ranks_different_steps": Scenario(signal_at={0: 3, 1: 12}, fixed=8),
    # the epoch ends (step 10) before the next agreement (16): acted on at the epoch end
    "epoch_end_first": Scenario(signal_at={1: 9}, fixed=8, steps_per_epoch=10, epochs=5),
    # after an epoch end (step 20) the intervals restart from it: agreements at 28, 36
    "after_epoch_end": Scenario(signal_at={0: 22}, fixed=8, steps_per_epoch=20, epochs=5),
    "adaptive": Scenario(signal_at={1: 5}),
    "fallback_default_group": Scenario(signal_at={1: 5}, fixed=8, no_group=True),
    "fallback_on_one_rank": Scenario(signal_at={1: 5}, fixed=8, no_group_on=1),
    "count_fixed": Scenario(fixed=16, manual_steps=512),
    "count_default": Scenario(manual_steps=512),
    # fit_end with an all-reduce outstanding, many times over: the group is created and destroyed each time
    "fit_end_outstanding": Scenario(fixed=8, manual_steps=11, repeat=20),
    "both_ranks_fail": Scenario(fixed=8, fail_at={0: 11, 1: 11}),
    "one_rank_fails": Scenario(fixed=8, fail_at={0: 11}, steps_per_epoch=100_000),
}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def count_collectives(counts: dict[str, int], groups: list[Any]) -> Callable[[], None]:
    """Count calls to the collectives of torch.distributed; returns the undo."""
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def counting(name: str) -> Callable[..., Any]:
        real = originals[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] = counts.get(name, 0) + 1
            if name == "all_reduce":
                groups.append(kwargs.get("group"))
            return real(*args, **kwargs)

        return call

    def undo() -> None:
        for name, real in originals.items():
            setattr(dist, name, real)

    for name in COLLECTIVES:
        setattr(dist, name, counting(name))
    return undo


def run_once(name: str, scenario: Scenario, rank: int, folder: Path) -> dict[str, Any]:
    ckpt = Checkpointer(folder, enable_checkpointing=False)
    if scenario.fixed is not None:
        ckpt.preemption.min_steps = ckpt.preemption.max_steps = scenario.fixed
    result: dict[str, Any] = {"code": None, "error": None, "last": 0}
    counts: dict[str, int] = {}
    groups: list[Any] = []

    if scenario.manual_steps:
        ckpt.fit_start()
        ckpt.epoch_start(0)
        undo = count_collectives(counts, groups)
        try:
            for _ in range(scenario.manual_steps):
                ckpt.step_end()
        finally:
            undo()
        ckpt.fit_end()
        result["collectives"] = sum(counts.values())
        result["dedicated_group"] = bool(groups) and all(g is not None for g in groups)
    else:

        def epoch_fn(epoch: int) -> None:
            for _ in ckpt.batches(range(scenario.steps_per_epoch)):
                step = ckpt.global_step + 1
                result["last"] = step
                if scenario.signal_at.get(rank) == step:
                    signal.raise_signal(signal.SIGTERM)
                if scenario.fail_at.get(rank) == step:
                    raise RuntimeError(f"failure on rank {rank} at step {step}")

        try:
            ckpt.fit(epoch_fn, max_epochs=scenario.epochs)
        except SystemExit as exc:
            result["code"] = exc.code
        except Exception as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
    result["step"] = ckpt.global_step
    manifest = read_manifest(str(folder / "checkpoints" / "preempted.ckpt"))
    result["manifest_step"] = None if manifest is None else manifest.global_step
    return result


def run(name: str, rank: int, workdir: Path) -> None:
    scenario = SCENARIOS[name]
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    records = Records()
    logging.getLogger("ckpthooks").addHandler(records)
    real_new_group = dist.new_group
    if scenario.no_group:

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("no new groups in this test")

        dist.new_group = refuse
    elif scenario.no_group_on == rank:

        def fail_after(*args: Any, **kwargs: Any) -> Any:
            real_new_group(*args, **kwargs)  # the other rank's new_group needs this one to join
            raise RuntimeError("this rank's new group failed in this test")

        dist.new_group = fail_after
    started = time.monotonic()
    try:
        results = [run_once(name, scenario, rank, folder / str(i)) for i in range(scenario.repeat)]
    finally:
        dist.new_group = real_new_group
        logging.getLogger("ckpthooks").removeHandler(records)
    result = dict(results[-1], repeats=results, warnings=records.messages, seconds=time.monotonic() - started)
    (folder / f"result-{rank}.json").write_text(json.dumps(result))
    print(f"rank {rank} {name}: {result['code']} at step {result['step']} {result['error'] or ''}", flush=True)


def main() -> int:
    names = sys.argv[1].split(",")
    rank, world, port, workdir = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5])
    logging.basicConfig(level=logging.WARNING)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    torch.manual_seed(0)
    alone = False
    try:
        for name in names:
            run(name, rank, workdir)
            alone = alone or name == "one_rank_fails"
    finally:
        if not alone:
            dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
