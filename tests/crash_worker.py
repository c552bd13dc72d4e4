"""The training process the crash-consistency harness kills (see docs/crash-consistency.md).

    python tests/crash_worker.py --root DIR --steps 40 --top-k 2 --every 1 --save-last true \
        --report start.json --events events.jsonl [--tripwire os.replace:7:after]

It trains a small model (about 0.4M parameters with AdamW: checkpoints of about 5 MB) with
``ModelCheckpoint(monitor="loss", save_top_k=K, save_last=..., every_n_train_steps=N,
filename="{step}")`` and ``ckpt_path="last"`` until ``global_step == --steps``. It is meant to be
killed with SIGKILL at any instant, either by the parent after a random delay or by itself through a
*tripwire*: ``--tripwire OP:N:WHEN`` wraps one operation and SIGKILLs the process on its N-th call,
``before`` or ``after`` delegating to the real one. Tripwires exist only in this test script.

Operations (only calls made from inside the ``ckpthooks`` package count, so torch or the logging
module never trip them): ``os.replace``, ``os.fsync``, ``os.remove``, ``os.rename``, ``os.link``,
``write_manifest``, ``remove_manifest``, ``record_commit`` (the commit index's update after a
manifest is written) and ``CheckpointStore.remove``. The commit index is kept from the first commit
on, and compared with its folder whenever it doubles, so that its updates and compactions take part
in every run (see ``ckpthooks/_commit_index.py``).

What the parent reads:

- ``--report``: written once the run has started and restored, before the first training step:
  ``{"pid", "restore": null | {"path", "global_step"}, "temps_after_start": [...]}``; the
  ``temps_after_start`` are temporary files (``is_temp_name``) still present right after the
  ``Checkpointer`` was constructed, which must be none.
- ``--events``: one JSON line per committed checkpoint (``{"event": "commit", "path", "step"}``)
  and, after a run that finished, ``{"event": "done", "global_step", "calls"}`` with the number of
  calls of each operation.
- stdout: the line ``READY`` when training starts.

``crash_worker.py --serve`` is the fork server the test uses: torch is imported once, and each run
is a forked child (see :func:`serve`), which saves ~2 s of imports per run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

OPERATIONS = (
    "os.replace",
    "os.fsync",
    "os.remove",
    "os.rename",
    "os.link",
    "write_manifest",
    "remove_manifest",
    "record_commit",
    "CheckpointStore.remove",
)

#: calls of each operation made by ckpthooks in this process so far
CALLS: dict[str, int] = dict.fromkeys(OPERATIONS, 0)


def _from_library(depth: int = 2) -> bool:
    """Whether the caller of the wrapped function is ckpthooks code (not torch, logging, this script)."""
    name = sys._getframe(depth).f_globals.get("__name__", "")
    return name == "ckpthooks" or name.startswith("ckpthooks.")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install_tripwires(spec: str | None) -> None:
    """Wrap every operation to count its calls; arm the one named in ``spec`` (``OP:N:before|after``)."""
    armed: tuple[str, int, str] | None = None
    if spec:
        op, n, when = spec.split(":")
        if op not in OPERATIONS or when not in ("before", "after") or int(n) < 1:
            raise SystemExit(f"bad tripwire {spec!r}")
        armed = (op, int(n), when)

    def wrap(op: str, real: Callable[..., Any], library_only: bool) -> Callable[..., Any]:
        @functools.wraps(real)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if library_only and not _from_library():
                return real(*args, **kwargs)
            CALLS[op] += 1
            fire = armed is not None and armed[0] == op and armed[1] == CALLS[op]
            if fire and armed is not None and armed[2] == "before":
                _die()
            result = real(*args, **kwargs)
            if fire:
                _die()
            return result

        return wrapper

    for name in ("replace", "fsync", "remove", "rename", "link"):
        setattr(os, name, wrap(f"os.{name}", getattr(os, name), library_only=True))

    import ckpthooks._catalog
    import ckpthooks._commit_index
    import ckpthooks._policies.model_checkpoint
    import ckpthooks._store

    ckpthooks._commit_index.MIN_CHECKPOINTS = 1
    ckpthooks._commit_index.CHECK_AFTER_BYTES = 0
    index = ckpthooks._commit_index
    index.record_commit = wrap("record_commit", index.record_commit, library_only=False)

    for name in ("write_manifest", "remove_manifest"):
        original = getattr(ckpthooks._catalog, name)
        wrapped = wrap(name, original, library_only=False)
        for module in list(sys.modules.values()):  # every module that imported the function by name
            if getattr(module, "__name__", "").startswith("ckpthooks") and getattr(module, name, None) is original:
                setattr(module, name, wrapped)
    store_cls = ckpthooks._store.CheckpointStore
    store_cls.remove = wrap("CheckpointStore.remove", store_cls.remove, library_only=False)  # type: ignore[method-assign]


def temp_files(root: str) -> list[str]:
    from ckpthooks._io.durable import is_temp_name

    found = []
    for folder, _dirs, files in os.walk(root):
        found += [os.path.join(folder, name) for name in files if is_temp_name(name)]
    return sorted(found)


def write_json(path: str, payload: Any) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as handle:
        json.dump(payload, handle)
    os.rename(tmp, path)  # called from this script: never counted, never trips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, required=True, help="train until global_step reaches this")
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--every", type=int, default=1, help="every_n_train_steps")
    parser.add_argument("--save-last", choices=("true", "link"), default="true")
    parser.add_argument("--steps-per-epoch", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--tripwire", default=None, help="OP:N:before|after")
    parser.add_argument("--report", required=True)
    parser.add_argument("--events", required=True)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="worker: %(levelname)s %(name)s: %(message)s")
    install_tripwires(args.tripwire)

    import torch
    from torch import nn

    from ckpthooks import Callback, Checkpointer, ModelCheckpoint

    events = open(args.events, "a", buffering=1)  # noqa: SIM115  # line-buffered: survives SIGKILL

    class CommitLog(Callback):
        def on_checkpoint_committed(self, checkpointer: Any, path: str, manifest: Any) -> None:
            events.write(json.dumps({"event": "commit", "path": path, "step": manifest.global_step}) + "\n")

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(256, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 512), nn.ReLU(),
                          nn.Linear(512, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    policy = ModelCheckpoint(
        monitor="loss",
        save_top_k=args.top_k,
        save_last=True if args.save_last == "true" else "link",
        every_n_train_steps=args.every,
        filename="{step}",
    )
    ckpt = Checkpointer(args.root, callbacks=[policy, CommitLog()])
    temps = temp_files(args.root)
    ckpt.track(model=model, optimizers=optimizer)
    report = ckpt.restore("last")
    write_json(
        args.report,
        {
            "pid": os.getpid(),
            "restore": None if report is None else {"path": report.path, "global_step": report.global_step},
            "temps_after_start": temps,
        },
    )
    print("READY", flush=True)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(step)
        x = torch.randn(32, 256, generator=g)
        return x, x[:, :8].sum(dim=1, keepdim=True) + torch.randn(32, 1, generator=g)

    ckpt.fit_start()
    while ckpt.global_step < args.steps:
        ckpt.epoch_start()  # a resumed run continues an unfinished epoch
        while ckpt.batch_idx < args.steps_per_epoch and ckpt.global_step < args.steps:
            x, y = batch(ckpt.global_step)
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            ckpt.log("loss", loss)
            ckpt.step_end()  # ModelCheckpoint saves here
        if ckpt.batch_idx >= args.steps_per_epoch:
            ckpt.epoch_end()
    ckpt.fit_end()
    events.write(json.dumps({"event": "done", "global_step": ckpt.global_step, "calls": CALLS}) + "\n")
    events.close()
    return 0


def serve() -> int:
    """Fork server: import torch once, then run ``main`` in a forked child per request.

    Requests are JSON lines on stdin: ``{"argv": [...], "stderr": path}``. For each, one line with
    the child's pid is written to stdout as soon as it is forked, and one with its exit code
    (negative: killed by that signal) once it has ended. ckpthooks is *not* imported here: every
    child imports it afresh, like a new training process (its own process token and state).
    """
    import traceback

    import torch
    from torch import nn

    torch.optim.AdamW(nn.Linear(1, 1).parameters())  # the first optimizer imports torch._dynamo (~1 s)
    assert not any(name == "ckpthooks" or name.startswith("ckpthooks.") for name in sys.modules)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: a training process
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_RDWR)
                err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                os.dup2(err, 2)
                code = main(request["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())
