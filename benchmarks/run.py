"""Run the benchmark suite: every section in a process of its own, then one table and one JSON file.

    python -m benchmarks.run --size full     # make bench: 512 MiB of state, 7 repetitions
    python -m benchmarks.run --size quick    # make bench-quick: 32 MiB, 3 repetitions, about a minute

Results go to ``benchmarks/results/<timestamp>-<size>.json`` and to ``latest.json`` (full runs; the
one committed) or ``latest-quick.json`` (ignored by git). Exit code 1 when a section failed, or,
with ``--fail-on-miss``, when a target was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, SIZES, write_json
from benchmarks.report import build_rows, render_text, rows_as_dicts

SECTIONS = {
    "disk": "benchmarks.disk",
    "loop": "benchmarks.loop",
    "cli": "benchmarks.cli_startup",
    "s3": "benchmarks.s3",
    "scale": "benchmarks.scale",
    "peers": "benchmarks.peers",
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _meminfo_total() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _disk(path: Path) -> dict[str, Any]:
    """The filesystem and block device under ``path``, as far as /proc and /sys tell."""
    info: dict[str, Any] = {"path": str(path)}
    best = ""
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                device, mountpoint, fstype = line.split()[:3]
                if str(path).startswith(mountpoint) and len(mountpoint) > len(best):
                    best = mountpoint
                    info.update(device=device, mountpoint=mountpoint, fstype=fstype)
    except OSError:
        return info
    name = os.path.basename(str(info.get("device", "")))
    block = Path("/sys/class/block") / name
    if block.exists():
        base = block.resolve()
        parent = base.parent if (base / "partition").exists() else base
        for key, file in (("rotational", "queue/rotational"), ("scheduler", "queue/scheduler")):
            with contextlib.suppress(OSError):
                info[key] = (parent / file).read_text().strip()
        with contextlib.suppress(OSError):
            info["driver"] = os.path.basename(os.readlink(parent / "device" / "driver"))
        if name.startswith("vd"):
            info["kind"] = "virtio block device (a VM disk; what backs it is not visible from inside)"
    usage = shutil.disk_usage(path)
    info["free_gib"] = round(usage.free / 2**30, 1)
    return info


def machine(workdir: Path) -> dict[str, Any]:
    import torch

    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_bytes": _meminfo_total(),
        "disk": _disk(workdir),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            d: _version(d)
            for d in (
                "ckpthooks",
                "lightning",
                "safetensors",
                "torch-checkpointing",
                "s3fs",
                "moto",
                "fsspec",
                "xxhash",
                "numpy",
            )
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default: 7 full, 3 quick)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch folder on the disk to measure (default: a folder of this run's own under "
        "benchmarks/.work, removed afterwards, so that concurrent runs do not collide)",
    )
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    own_workdir = args.workdir is None
    workdir = (args.workdir or ROOT / "benchmarks" / ".work" / f"{stamp}-{os.getpid()}").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    meta: dict[str, Any] = {
        "timestamp": stamp,
        "size": args.size,
        "config": dict(SIZES[args.size], **({"reps": args.reps} if args.reps else {})),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(workdir),
        "load_average_start": os.getloadavg(),
    }
    print(f"ckpthooks benchmarks, size {args.size}: {', '.join(chosen)} (scratch folder {workdir})", flush=True)
    sections: dict[str, Any] = {}
    failed = False
    for name in chosen:
        out = workdir / f"{name}.json"
        if out.exists():
            out.unlink()
        cmd = [sys.executable, "-m", SECTIONS[name], "--size", args.size, "--workdir", str(workdir), "--out", str(out)]
        if args.reps:
            cmd += ["--reps", str(args.reps)]
        print(f"- {name}", flush=True)
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, check=False, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0 or not out.exists():
            failed = True
            sections[name] = {"error": f"exit code {done.returncode}\n{done.stdout[-4000:]}"}
            print(f"  section {name} failed (exit code {done.returncode})", file=sys.stderr, flush=True)
        else:
            sections[name] = json.loads(out.read_text())
        sections.setdefault("_seconds", {})[name] = round(time.perf_counter() - start, 1)
    meta["load_average_end"] = os.getloadavg()
    meta["wall_seconds"] = round(time.time() - started, 1)
    if "disk" in sections and "error" not in sections["disk"]:
        meta["page_cache"] = sections["disk"].get("cache_method")
        meta["peak_rss_reset"] = sections["disk"].get("peak_reset")

    try:
        rows = build_rows(sections)
    except Exception as exc:  # a report bug must not lose the raw samples
        rows = []
        failed = True
        print(f"building the table failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print(render_text(rows))
    loaded = max(meta["load_average_start"][0], meta["load_average_end"][0])
    if loaded > (os.cpu_count() or 1):
        print(
            f"\nwarning: the load average reached {loaded:.1f} on {os.cpu_count()} CPUs: other processes "
            "competed with the measurements; rerun on an idle machine for figures to publish",
            flush=True,
        )

    result = {"meta": meta, "rows": rows_as_dicts(rows), "sections": sections}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamped = args.results_dir / f"{stamp}-{args.size}.json"
    latest = args.results_dir / ("latest.json" if args.size == "full" else f"latest-{args.size}.json")
    write_json(stamped, result)
    write_json(latest, result)
    print(f"\nwrote {stamped.relative_to(ROOT) if stamped.is_relative_to(ROOT) else stamped} and {latest.name}")
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            workdir.parent.rmdir()  # benchmarks/.work, unless another run is using it
    misses = [r for r in rows if r.status == "MISS"]
    if misses:
        print(f"{len(misses)} target(s) missed: " + "; ".join(r.figure for r in misses))
    if args.size != "full":
        print(f"note: the targets are defined for the full run; at --size {args.size} PASS/MISS is indicative only")
    return 1 if failed or (args.fail_on_miss and misses) else 0


if __name__ == "__main__":
    sys.exit(main())
