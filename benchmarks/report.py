"""From the sections' raw samples to the table: medians, ratios, targets, PASS/MISS.

``python -m benchmarks.report [results.json] [--markdown]`` prints the table of a stored run
(default ``benchmarks/results/latest.json``); ``--markdown`` prints it for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, MiB, median

NA_ASYNC = "n/a (async saving not available)"


@dataclass
class Row:
    section: str
    figure: str
    value: str  # the measured figure, formatted
    derived: str = ""  # ratio, throughput, percentage
    target: str = ""  # empty: information only
    status: str = "info"  # PASS, MISS, info, n/a, error
    number: float | None = None  # the figure the target is checked against (seconds, ratio, ...)
    spread: str = ""  # min to max of the repetitions behind the median


def _spread(values: list[float], fmt: Any = None) -> str:
    """``min to max`` of the repetitions (formatted like the median)."""
    fmt = fmt or _s
    return f"{fmt(min(values))} to {fmt(max(values))}" if len(values) > 1 else ""


def _spread_of(samples: list[dict[str, Any]], key: str) -> str:
    return _spread([float(s[key]) for s in samples])


def _s(seconds: float) -> str:
    if math.isnan(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.2f} s"


def _mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB" if abs(n) >= 10 * MiB else f"{n / MiB:.1f} MiB"


def _rate(nbytes: float, seconds: float) -> str:
    rate = nbytes / seconds
    return f"{rate / 1e9:.2f} GB/s" if rate >= 1e9 else f"{rate / 1e6:.0f} MB/s"


def _check(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _med(samples: list[dict[str, Any]], key: str) -> float:
    return median([float(s[key]) for s in samples])


def disk_rows(d: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    save = d["save"]
    size = float(_med(save["ckpthooks"], "bytes"))
    sec = f"Durable sync save ({_mib(size)} checkpoint, {d['state']['parameters'] / 1e6:.1f} M parameters + AdamW)"
    torch_s = _med(save["torch"], "seconds")
    ck_s = _med(save["ckpthooks"], "seconds")
    rows.append(Row(sec, "torch.save + fsync (file and folder)", _s(torch_s), _rate(size, torch_s)))
    rows[-1].spread = _spread_of(save["torch"], "seconds")
    floors = {"floor-direct": "O_DIRECT + fdatasync", "floor-buffered": "buffered writes + fsync"}
    for name, how in floors.items():
        if name in save:
            floor_s = _med(save[name], "seconds")
            rows.append(
                Row(
                    sec,
                    f"floor: random bytes of the same size, {how}",
                    _s(floor_s),
                    _rate(_med(save[name], "bytes"), floor_s),
                    spread=_spread_of(save[name], "seconds"),
                )
            )
    speedup_torch = torch_s / ck_s
    rows.append(
        Row(
            sec,
            "ckpthooks save_checkpoint (temp file, O_DIRECT, fsync, rename, checksum, manifest)",
            _s(ck_s),
            f"{_rate(size, ck_s)}, {speedup_torch:.2f}x faster than torch.save",
            "≥ 2.5x faster than torch.save+fsync",
            _check(speedup_torch >= 2.5),
            speedup_torch,
            _spread_of(save["ckpthooks"], "seconds"),
        )
    )
    if "floor-direct" in save:
        floor_rate = _med(save["floor-direct"], "bytes") / _med(save["floor-direct"], "seconds")
        share_of_floor = (size / ck_s) / floor_rate
        rows.append(
            Row(
                sec,
                "ckpthooks throughput / the O_DIRECT floor's",
                f"{share_of_floor:.2f}x",
                "",
                "≥ 0.7x",
                _check(share_of_floor >= 0.7),
                share_of_floor,
            )
        )
    if "lightning" in save:
        lt_s = _med(save["lightning"], "seconds")
        rows.append(
            Row(
                sec,
                "Lightning TorchCheckpointIO.save_checkpoint + fsync",
                _s(lt_s),
                f"{lt_s / torch_s:.2f}x torch.save",
                spread=_spread_of(save["lightning"], "seconds"),
            )
        )
        speedup = lt_s / ck_s
        rows.append(
            Row(
                sec,
                "ckpthooks speed-up over Lightning",
                f"{speedup:.2f}x",
                "",
                "≥ 2.5x faster",
                _check(speedup >= 2.5),
                speedup,
            )
        )
    else:
        rows.append(Row(sec, "Lightning TorchCheckpointIO", "n/a (lightning not installed)", status="n/a"))
    if "safetensors" in save:
        st_s = _med(save["safetensors"], "seconds")
        rows.append(
            Row(
                sec,
                "safetensors save_file + fsync (flattened model + optimizer tensors)",
                _s(st_s),
                f"{st_s / torch_s:.2f}x torch.save",
                spread=_spread_of(save["safetensors"], "seconds"),
            )
        )
    labels = {"ckpthooks": "ckpthooks", "torch": "torch.save", "lightning": "Lightning", "safetensors": "safetensors"}
    for name in ("ckpthooks", "torch", "lightning", "safetensors"):
        if name not in save:
            continue
        peak = _med(save[name], "peak_increase")
        share = peak / size
        if name == "ckpthooks":
            rows.append(
                Row(
                    sec,
                    "peak RSS increase during the save: ckpthooks (its two 16 MiB write buffers included)",
                    _mib(peak),
                    f"{share:.1%} of checkpoint",
                    "≤ 5% of checkpoint + 64 MiB",
                    _check(peak <= 0.05 * size + 64 * 2**20),
                    share,
                )
            )
        else:
            rows.append(
                Row(sec, f"peak RSS increase during the save: {labels[name]}", _mib(peak), f"{share:.1%} of checkpoint")
            )
    cks = d["checksum"]
    algo = cks["default"]
    hash_s = cks["seconds"][algo]
    hash_rate = cks["bytes"] / hash_s
    disk_rate = size / torch_s
    rows.append(
        Row(
            sec,
            f"checksum {algo} (the default here) on one core",
            _rate(cks["bytes"], hash_s),
            f"{hash_rate / disk_rate:.1f}x the torch.save+fsync rate",
            "faster than the disk",
            _check(hash_rate > disk_rate),
            hash_rate / disk_rate,
        )
    )
    for other, seconds in sorted(cks["seconds"].items()):
        if other != algo:
            rows.append(Row(sec, f"checksum {other}", _rate(cks["bytes"], seconds)))

    sec = "Async save (each run in a new process)"
    memcpy = d["memcpy"]
    nbytes = memcpy[0]["bytes"]
    default = _med(memcpy, "fresh_seconds")
    one = _med(memcpy, "fresh_seconds_one_thread")
    floor = min(default, one)  # the floor is the fastest way measured to copy these bytes
    threads = memcpy[0]["threads"]
    for label, seconds in ((f"{threads} threads (torch's default)", default), ("1 thread", one)):
        mark = " = the floor" if seconds == floor else ""
        rows.append(
            Row(
                sec,
                f"memcpy into fresh memory (empty_like + copy_ of every tensor), {label}",
                _s(seconds),
                _rate(nbytes, seconds) + mark,
            )
        )
    warm = _med(memcpy, "warm_seconds")
    rows.append(Row(sec, f"memcpy into already-touched buffers, {threads} threads", _s(warm), _rate(nbytes, warm)))
    info = d["async"]
    if not info.get("available"):
        for figure in (
            "training thread blocked in save_checkpoint",
            "blocked / sync save",
            "total until wait() returns",
            "peak RSS increase",
        ):
            rows.append(Row(sec, figure, NA_ASYNC, status="n/a"))
    else:
        runs = info["samples"]
        first = [r["first"] for r in runs]
        second = [r["second"] for r in runs]
        blocked = _med(first, "blocked_seconds")
        steps = runs[0].get("steps_before_first_save")
        when = f"after fit_start and {steps} training steps" if steps else "first save of the process"
        warm_share = [r["warm_bytes_at_first_save"] / r["state_bytes"] for r in runs if r.get("state_bytes")]
        rows.append(
            Row(
                sec,
                f"training thread blocked in save_checkpoint (first save, {when})",
                _s(blocked),
                f"{blocked / floor:.2f}x memcpy"
                + (f"; buffers warm at the save: {median(warm_share):.0%}" if warm_share else ""),
                "≤ 1.5x memcpy floor",
                _check(blocked <= 1.5 * floor),
                blocked / floor,
                _spread_of(first, "blocked_seconds"),
            )
        )
        share = blocked / ck_s
        rows.append(
            Row(sec, "blocked time / durable sync save time", f"{share:.1%}", "", "≤ 15%", _check(share <= 0.15), share)
        )
        rows.append(
            Row(
                sec,
                "total until wait() returns (first save)",
                _s(_med(first, "total_seconds")),
                f"{_med(first, 'total_seconds') / ck_s:.2f}x sync save",
            )
        )
        if steps:
            work = median([r["work_seconds"] for r in runs])
            rows.append(Row(sec, f"fit_start + {steps} training steps before the first save", _s(work)))
        immediate = [r["immediate"] for r in runs if "immediate" in r]
        if immediate:
            b0 = _med(immediate, "blocked_seconds")
            rows.append(
                Row(
                    sec,
                    "blocked, first save right after fit_start (no time to warm up)",
                    _s(b0),
                    f"{b0 / floor:.2f}x memcpy, {b0 / ck_s:.1%} of sync",
                    spread=_spread_of(immediate, "blocked_seconds"),
                )
            )
        peak = _med(first, "peak_increase")
        size_async = _med(first, "bytes")
        rows.append(
            Row(
                sec,
                "peak RSS increase, first save until wait() (buffers warmed up for it included)"
                if steps
                else "peak RSS increase, first save until wait()",
                _mib(peak),
                f"{peak / size_async:.2f}x checkpoint",
                "≤ 1.1x checkpoint",
                _check(peak <= 1.1 * size_async),
                peak / size_async,
            )
        )
        b2 = _med(second, "blocked_seconds")
        rows.append(
            Row(
                sec,
                "blocked, second save (buffers of the first may be reused)",
                _s(b2),
                f"{b2 / floor:.2f}x memcpy, {b2 / ck_s:.1%} of sync",
            )
        )
        rows.append(
            Row(
                sec,
                "peak RSS increase, second save (buffers kept from the first included)"
                if steps
                else "peak RSS increase over both saves",
                _mib(_med(second, "peak_increase")),
                f"{_med(second, 'peak_increase') / size_async:.2f}x checkpoint",
            )
        )

    if info.get("available") and runs and "cpu_seconds" in runs[0]["second"]:
        cpu = _med([r["second"] for r in runs], "cpu_seconds")
        hash_seconds = d["checksum"]["seconds"][d["checksum"]["default"]] * nbytes / d["checksum"]["bytes"]
        reference = one + hash_seconds  # one memcpy (one thread) and one checksum pass
        rows.append(
            Row(
                sec,
                "CPU seconds of one background save (second save, every thread of the process)",
                f"{cpu:.3f} s",
                f"{cpu / reference:.2f}x one memcpy + one {d['checksum']['default']} pass ({reference:.3f} s)",
                "≤ 1.5x memcpy + checksum",
                _check(cpu <= 1.5 * reference),
                cpu / reference,
            )
        )
    if info.get("available") and runs and "steps" in runs[0]:
        alone = median(r["steps"]["step_seconds"] for r in runs)
        during = median(r["steps"]["step_seconds_during_save"] for r in runs)
        rows.append(
            Row(
                sec,
                "training step while a background save writes / without a save",
                f"{_s(during)} / {_s(alone)}",
                f"{during / alone:.2f}x",
            )
        )
    method = ", ".join(d.get("cache_method", [])) or "none"
    if d.get("read_floor"):
        read_s = _med(d["read_floor"], "seconds")
        rows.append(
            Row(
                f"Restore, cold (page cache dropped before each run ({method}))",
                "floor: sequential buffered read of the file, cold",
                _s(read_s),
                _rate(_med(d["read_floor"], "bytes"), read_s),
                spread=_spread_of(d["read_floor"], "seconds"),
            )
        )
    for cache in ("cold", "warm"):
        found = d["restore"][cache]
        what = f"page cache dropped before each run ({method})" if cache == "cold" else "file in the page cache"
        sec = f"Restore, {cache} ({what})"
        base = _med(found["torch"], "seconds")
        rows.append(Row(sec, "torch.load + model/optimizer load_state_dict", _s(base)))
        rows[-1].spread = _spread_of(found["torch"], "seconds")
        full = _med(found["ckpthooks"], "seconds")
        rows.append(
            Row(
                sec,
                "ckpthooks restore() with full checksum verification (the call alone)",
                _s(full),
                f"{full / base:.2f}x torch.load",
                spread=_spread_of(found["ckpthooks"], "seconds"),
            )
        )
        sized = _med(found["ckpthooks-verify-size"], "seconds")
        rows.append(Row(sec, "ckpthooks restore() with verify='size'", _s(sized), f"{sized / base:.2f}x torch.load"))
        rows[-1].spread = _spread_of(found["ckpthooks-verify-size"], "seconds")
        rows.append(
            Row(
                sec,
                "first optimizer step after the restore: ckpthooks / torch.load",
                f"{_s(_med(found['ckpthooks'], 'first_step_seconds'))} / "
                f"{_s(_med(found['torch'], 'first_step_seconds'))}",
                f"second step {_s(_med(found['torch'], 'second_step_seconds'))}",
            )
        )
        total_ck = median([s["seconds"] + s["first_step_seconds"] for s in found["ckpthooks"]])
        total_t = median([s["seconds"] + s["first_step_seconds"] for s in found["torch"]])
        rows.append(
            Row(
                sec,
                "time to resumed training, restore + first optimizer step (full verification): ckpthooks / torch.load",
                f"{_s(total_ck)} / {_s(total_t)}",
                f"{total_ck / total_t:.2f}x",
                "≤ 0.8x torch.load+load_state_dict",
                _check(total_ck <= 0.8 * total_t),
                total_ck / total_t,
            )
        )
    return rows


def loop_rows(d: dict[str, Any]) -> list[Row]:
    sec = f"Loop integration, no save due (tiny model, {d['steps']:,} steps, per step)"
    rows = [Row(sec, "plain for _ in range(N)", _s(median(d["plain_seconds"]) / d["steps"]))]
    labels = {
        "batches_default_policy": "for _ in ckpt.batches(range(N)), default policy",
        "batches_every_n_train_steps": "ckpt.batches(...), ModelCheckpoint(every_n_train_steps=10**9)",
        "step_end_default_policy": "ckpt.step_end() alone, default policy",
        "step_end_every_n_train_steps": "ckpt.step_end() alone, every_n_train_steps=10**9",
        "batches_no_preemption_signals": "ckpt.batches(...), default policy, preemption_signals=None",
    }
    for name, label in labels.items():
        per = median([s["per_step_us"] for s in d["cases"][name]])
        if name == "batches_no_preemption_signals":
            rows.append(Row(sec, label, f"{per:.2f} µs"))
        else:
            rows.append(Row(sec, label, f"{per:.2f} µs", "", "≤ 5 µs/step", _check(per <= 5.0), per))
    found = d.get("distributed")
    if found:
        per = median(found["per_step_us"]["default"])
        rows.append(
            Row(
                sec,
                "ckpt.step_end() under torch.distributed (2 ranks, gloo), default preemption signals",
                f"{per:.1f} µs",
                "",
                "≤ 5 µs/step",
                _check(per <= 5.0),
                per,
            )
        )
        per = median(found["per_step_us"]["no_preemption_signals"])
        rows.append(
            Row(
                sec, "ckpt.step_end() under torch.distributed (2 ranks, gloo), preemption_signals=None", f"{per:.2f} µs"
            )
        )
    return rows


def cli_rows(d: dict[str, Any]) -> list[Row]:
    sec = "Command line (wall time of a subprocess)"
    s = {k: median(v) for k, v in d["seconds"].items()}
    return [
        Row(sec, "python -c pass", _s(s["python_pass"])),
        Row(sec, 'python -c "import ckpthooks"', _s(s["import_ckpthooks"])),
        Row(
            sec,
            "ckpthooks plugins",
            _s(s["ckpthooks_plugins"]),
            "",
            "≤ 0.5 s",
            _check(s["ckpthooks_plugins"] <= 0.5),
            s["ckpthooks_plugins"],
        ),
        Row(sec, "ckpthooks --help", _s(s["ckpthooks_help"])),
    ]


def s3_rows(d: dict[str, Any]) -> list[Row]:
    size = d["bytes"]
    sec = f"S3 through moto on loopback ({_mib(size)} checkpoint)"
    s = {k: median(v) for k, v in d["seconds"].items()}
    put, save = s["raw_put"], s["ckpthooks_save"]
    get, restore = s["raw_get"], s["ckpthooks_restore"]
    rows = [
        Row(sec, "raw s3fs pipe_file of the same bytes", _s(put), _rate(size, put)),
        Row(
            sec,
            "ckpthooks save_checkpoint (stream, checksum, pending marker, manifest)",
            _s(save),
            f"{_rate(size, save)} = {put / save:.2f}x raw",
            "≥ 0.9x raw put throughput",
            _check(put / save >= 0.9),
            put / save,
        ),
        Row(sec, "raw s3fs cat_file", _s(get), _rate(size, get)),
        Row(
            sec,
            "ckpthooks restore() (verify + torch.load + load_state_dict)",
            _s(restore),
            f"{_rate(size, restore)} = {get / restore:.2f}x raw",
        ),
    ]
    for row, key in zip(rows, ("raw_put", "ckpthooks_save", "raw_get", "ckpthooks_restore")):
        row.spread = _spread(d["seconds"][key])
    return rows


def scale_rows(d: dict[str, Any]) -> list[Row]:
    n = d["checkpoints"]
    sec = f"Scale ({n:,} committed checkpoints; top-k: {d['topk_measured_updates']} updates after a history)"
    rows = []
    for which in ("last", "best"):
        for cache in ("warm", "cold"):
            seconds = median(d["find_seconds"][f"{which}_{cache}"])
            rows.append(
                Row(
                    sec,
                    f'find "{which}", {cache} page cache',
                    _s(seconds),
                    "",
                    "≤ 1 s",
                    _check(seconds <= 1.0),
                    seconds,
                    _spread(d["find_seconds"][f"{which}_{cache}"]),
                )
            )
    without = d.get("find_seconds_without_index")
    for which in ("last", "best") if without else ():
        for cache in ("warm", "cold"):
            samples = without[f"{which}_{cache}"]
            rows.append(
                Row(
                    sec,
                    f'find "{which}", {cache} page cache, without the commit index (every manifest read)',
                    _s(median(samples)),
                    spread=_spread(samples),
                )
            )
    for k in ("10", "-1"):
        runs = d["topk"][k]
        short = median([r["policy_update_seconds"] for r in runs["10"]])
        long = median([r["policy_update_seconds"] for r in runs[str(n)]])
        ratio = long / short
        rows.append(
            Row(
                sec,
                f"ModelCheckpoint top-k update, save_top_k={k}: history 10 / {n:,}",
                f"{_s(short)} / {_s(long)}",
                f"{ratio:.2f}x",
                "flat (≤ 1.5x)",
                _check(ratio <= 1.5),
                ratio,
            )
        )
        bare_short = median([r["topk_update_seconds"] for r in runs["10"]])
        bare_long = median([r["topk_update_seconds"] for r in runs[str(n)]])
        rows.append(
            Row(
                sec,
                f"bare TopK operations, save_top_k={k}: history 10 / {n:,}",
                f"{_s(bare_short)} / {_s(bare_long)}",
                f"{bare_long / bare_short:.2f}x",
            )
        )
    sd_short = median([r["state_dict_seconds"] for r in d["topk"]["-1"]["10"]])
    sd_long = median([r["state_dict_seconds"] for r in d["topk"]["-1"][str(n)]])
    rows.append(
        Row(
            sec,
            f"ModelCheckpoint.state_dict() (in every save), save_top_k=-1: history 10 / {n:,}",
            f"{_s(sd_short)} / {_s(sd_long)}",
            f"{sd_long / sd_short:.0f}x",
        )
    )
    return rows


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if abs(n) >= 2**30 else _mib(n)


def _part_trouble(sec: str, part: dict[str, Any], what: str) -> list[Row] | None:
    """The row of a part that failed or was skipped, or ``None`` when it has figures."""
    if "error" in part:
        return [Row(sec, f"{what} failed", part["error"].strip().splitlines()[0], status="error")]
    if "skipped" in part:
        return [Row(sec, what, f"n/a ({part['skipped']})", status="n/a")]
    return None


def _load_row(sec: str, part: dict[str, Any]) -> Row:
    start, end = part["load_average_start"][0], part["load_average_end"][0]
    return Row(
        sec,
        "load average (1 min) before / after this part; its wall time",
        f"{start:.2f} / {end:.2f}",
        f"{part['seconds']:.0f} s",
    )


def _large_rows(part: dict[str, Any]) -> list[Row]:
    sec = f"Durable sync save, large state ({_size(part.get('bytes', 0))})"
    trouble = _part_trouble(sec, part, "durable sync saves of the large state")
    if trouble:
        return trouble
    save = part["save"]
    size = float(_med(save["ckpthooks"], "bytes"))
    sec = (
        f"Durable sync save, large state ({_size(size)} checkpoint, {part['state']['parameters'] / 1e6:.0f} M "
        f"parameters + AdamW; {part['reps']} repetitions)"
    )
    torch_s = _med(save["torch"], "seconds")
    ck_s = _med(save["ckpthooks"], "seconds")
    rows = [
        Row(
            sec,
            "torch.save + fsync (file and folder)",
            _s(torch_s),
            _rate(size, torch_s),
            spread=_spread_of(save["torch"], "seconds"),
        )
    ]
    if "floor-direct" in save:
        floor_s = _med(save["floor-direct"], "seconds")
        rows.append(
            Row(
                sec,
                "floor: random bytes of the same size, O_DIRECT + fdatasync",
                _s(floor_s),
                _rate(_med(save["floor-direct"], "bytes"), floor_s),
                spread=_spread_of(save["floor-direct"], "seconds"),
            )
        )
    speedup = torch_s / ck_s
    rows.append(
        Row(
            sec,
            "ckpthooks save_checkpoint (temp file, O_DIRECT, fsync, rename, checksum, manifest)",
            _s(ck_s),
            f"{_rate(size, ck_s)}, {speedup:.2f}x faster than torch.save",
            "≥ 2.5x faster than torch.save+fsync",
            _check(speedup >= 2.5),
            speedup,
            _spread_of(save["ckpthooks"], "seconds"),
        )
    )
    if "floor-direct" in save:
        floor_rate = _med(save["floor-direct"], "bytes") / _med(save["floor-direct"], "seconds")
        share = (size / ck_s) / floor_rate
        rows.append(
            Row(
                sec,
                "ckpthooks throughput / the O_DIRECT floor's",
                f"{share:.2f}x",
                "",
                "≥ 0.7x",
                _check(share >= 0.7),
                share,
            )
        )
    else:
        rows.append(Row(sec, "ckpthooks throughput / the O_DIRECT floor's", "n/a (no O_DIRECT here)", status="n/a"))
    peak = _med(save["ckpthooks"], "peak_increase")
    rows.append(
        Row(
            sec,
            "peak RSS increase during the save: ckpthooks (its two 16 MiB write buffers included)",
            _mib(peak),
            f"{peak / size:.1%} of checkpoint",
            "≤ 5% of checkpoint + 64 MiB",
            _check(peak <= 0.05 * size + 64 * 2**20),
            peak / size,
        )
    )
    peak = _med(save["torch"], "peak_increase")
    rows.append(
        Row(sec, "peak RSS increase during the save: torch.save", _mib(peak), f"{peak / size:.1%} of checkpoint")
    )
    rows.append(_load_row(sec, part))
    return rows


def _peer_rows(part: dict[str, Any]) -> list[Row]:
    sec = "Peers, durable saves of the benchmark state"
    trouble = _part_trouble(sec, part, "the peers' saves")
    if trouble:
        return trouble
    save, errors, tc = part["save"], part.get("errors", {}), part["tc"]
    if "ckpthooks" in errors:
        return [Row(sec, "ckpthooks save_checkpoint failed", errors["ckpthooks"], status="error")]
    size = float(_med(save["ckpthooks"], "bytes"))
    sec = (
        f"Peers, durable saves ({_mib(size)} checkpoint, model + optimizer state; each a ratio to ckpthooks' "
        f"durable save in the same run; {part['reps']} repetitions)"
    )
    ck_s = _med(save["ckpthooks"], "seconds")
    rows = [
        Row(
            sec,
            "ckpthooks save_checkpoint (durable, O_DIRECT): the reference",
            _s(ck_s),
            _rate(size, ck_s),
            spread=_spread_of(save["ckpthooks"], "seconds"),
        )
    ]

    def ratio(seconds: float) -> str:
        return f"{seconds / ck_s:.2f}x ckpthooks' time"

    def missing(name: str, figure: str) -> bool:
        if name in errors:
            rows.append(Row(sec, figure, f"n/a (failed: {errors[name]})", status="n/a"))
            return True
        if not save.get(name):
            reason = tc.get("reason", "not measured") if name.startswith("tc") else "not measured"
            rows.append(Row(sec, figure, f"n/a ({reason})", status="n/a"))
            return True
        return False

    def sync_row(name: str, figure: str) -> None:
        if missing(name, figure):
            return
        seconds = _med(save[name], "seconds")
        rows.append(
            Row(
                sec,
                figure,
                _s(seconds),
                f"{ratio(seconds)}, {_rate(_med(save[name], 'bytes'), seconds)}",
                spread=_spread_of(save[name], "seconds"),
            )
        )

    def async_rows(name: str, what: str, staging_thread: bool) -> None:
        if missing(name, f"{what}: training thread blocked"):
            return
        second = [s["second"] for s in save[name]]
        first = [s["first"] for s in save[name]]
        blocked, total = _med(second, "blocked_seconds"), _med(second, "total_seconds")
        if staging_thread:
            staged = _med(second, "staged_seconds")
            rows.append(
                Row(
                    sec,
                    f"{what}, second save: the call returns / the staging copy is done (manager.lock() free)",
                    f"{_s(blocked)} / {_s(staged)}",
                    f"{staged / ck_s:.2f}x ckpthooks' sync save",
                    spread=_spread_of(second, "staged_seconds"),
                )
            )
        else:
            rows.append(
                Row(
                    sec,
                    f"{what}, second save: training thread blocked (the call returns; staging copy included)",
                    _s(blocked),
                    f"{blocked / ck_s:.2f}x ckpthooks' sync save",
                    spread=_spread_of(second, "blocked_seconds"),
                )
            )
        rows.append(
            Row(
                sec,
                f"{what}, second save: until the save completed + fsync",
                _s(total),
                ratio(total),
                spread=_spread_of(second, "total_seconds"),
            )
        )
        key = "staged_seconds" if staging_thread else "blocked_seconds"
        rows.append(
            Row(
                sec,
                f"{what}, first save of the state: " + ("staged" if staging_thread else "blocked") + " / complete",
                f"{_s(_med(first, key))} / {_s(_med(first, 'total_seconds'))}",
                ratio(_med(first, "total_seconds")),
            )
        )

    sync_row("torch", "torch.save + fsync (file and folder)")
    sync_row("dcp", "torch.distributed.checkpoint dcp.save (no process group) + fsync of every file and folder")
    async_rows("dcp-async", "dcp.async_save (thread)", staging_thread=False)
    if tc.get("available"):
        io = "use_direct_io=True" if tc.get("direct_io") else "use_direct_io=False"
        note = tc.get("direct_io_True_error")
        rows.append(
            Row(
                sec,
                f"torch-checkpointing {tc.get('version') or ''} configuration: no pinned memory, no non-blocking "
                f"copy (CPU), {io}",
                "CheckpointManager",
                f"its default use_direct_io=True failed here: {note}" if note else "",
            )
        )
        sync_row("tc", "torch-checkpointing CheckpointManager sync save + fsync of every file and folder")
        async_rows("tc-async", "torch-checkpointing async save (staging thread, writer process)", staging_thread=True)
    else:
        rows.append(Row(sec, "torch-checkpointing", f"n/a ({tc.get('reason', 'not measured')})", status="n/a"))
    names = [
        (n, label)
        for n, label in (
            ("ckpthooks", "ckpthooks"),
            ("torch", "torch.save"),
            ("dcp", "dcp.save"),
            ("tc", "torch-checkpointing"),
        )
        if save.get(n)
    ]
    rows.append(
        Row(
            sec,
            "peak RSS increase during the sync save: " + " / ".join(label for _, label in names),
            " / ".join(_mib(_med(save[n], "peak_increase")) for n, _ in names),
        )
    )
    rows.append(_load_row(sec, part))
    return rows


def _small_rows(part: dict[str, Any], peers: dict[str, Any]) -> list[Row]:
    sec = "Small tensors"
    trouble = _part_trouble(sec, part, "the small-tensor saves and restores")
    if trouble:
        return trouble
    n, save, restore = part["count"], part["save"], part["restore"]
    sec = (
        f"{n:,} small tensors ({_mib(part['tensor_bytes'])} of float32, {part['elements']['min']:,} to "
        f"{part['elements']['max']:,} elements each; {part['reps']} repetitions)"
    )
    big = peers.get("save", {}) if "error" not in peers and "skipped" not in peers else {}

    def overhead(name: str, seconds: float, nbytes: float) -> str:
        """Seconds beyond what the bytes take at the saver's own large-state throughput, per tensor."""
        if not big.get(name):
            return ""
        rate = _med(big[name], "bytes") / _med(big[name], "seconds")
        return f"{(seconds - nbytes / rate) / n * 1e6:.1f} µs per tensor over its {_mib(_med(big[name], 'bytes'))} rate"

    torch_s = _med(save["torch"], "seconds")
    ck_s = _med(save["ckpthooks"], "seconds")
    rows = [
        Row(
            sec,
            "save: torch.save(state_dict) + fsync (file and folder)",
            _s(torch_s),
            overhead("torch", torch_s, _med(save["torch"], "bytes")),
            spread=_spread_of(save["torch"], "seconds"),
        ),
        Row(
            sec,
            "save: ckpthooks save_checkpoint (a tracked module holding a ParameterList)",
            _s(ck_s),
            overhead("ckpthooks", ck_s, _med(save["ckpthooks"], "bytes")),
            spread=_spread_of(save["ckpthooks"], "seconds"),
        ),
        Row(
            sec,
            f"{n:,} small tensors: per-tensor overhead no worse than torch.save's "
            "(rule: ckpthooks' save time ≤ torch.save + fsync's)",
            f"{_s(ck_s)} / {_s(torch_s)}",
            f"{ck_s / torch_s:.2f}x torch.save",
            "≤ 1.0x torch.save+fsync",
            _check(ck_s <= torch_s),
            ck_s / torch_s,
        ),
    ]
    load_s = _med(restore["torch"], "seconds")
    ck_r = _med(restore["ckpthooks"], "seconds")
    rows.append(
        Row(
            sec,
            "restore, file in the page cache: torch.load + load_state_dict",
            _s(load_s),
            spread=_spread_of(restore["torch"], "seconds"),
        )
    )
    rows.append(
        Row(
            sec,
            "restore, file in the page cache: ckpthooks restore() with full verification",
            _s(ck_r),
            f"{ck_r / load_s:.2f}x torch.load; {(ck_r - load_s) / n * 1e6:+.1f} µs per tensor",
            spread=_spread_of(restore["ckpthooks"], "seconds"),
        )
    )
    rows.append(_load_row(sec, part))
    return rows


def peers_rows(d: dict[str, Any]) -> list[Row]:
    return _large_rows(d["large"]) + _peer_rows(d["peers"]) + _small_rows(d["small"], d["peers"])


BUILDERS = {
    "disk": disk_rows,
    "loop": loop_rows,
    "cli": cli_rows,
    "s3": s3_rows,
    "scale": scale_rows,
    "peers": peers_rows,
}


def build_rows(sections: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, builder in BUILDERS.items():
        data = sections.get(name)
        if data is None:
            continue
        if "error" in data:
            rows.append(Row(name, f"section {name} failed", data["error"].strip().splitlines()[-1], status="error"))
            continue
        rows.extend(builder(data))
    return rows


# ------------------------------------------------------------------------------------- rendering
HEADERS = ("Figure", "Median", "Range", "Derived", "Target", "Result")


def render_text(rows: list[Row]) -> str:
    widths = [58, 18, 18, 32, 28, 6]
    lines: list[str] = []
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append("")
            lines.append(section)
            lines.append("  " + "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths)).rstrip())
        cells = (row.figure, row.value, row.spread, row.derived, row.target or "-", row.status)
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    lines: list[str] = []
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines += ["", f"**{section}**", "", "| " + " | ".join(HEADERS) + " |", "|---|---|---|---|---|---|"]
        status = f"**{row.status}**" if row.status == "MISS" else row.status
        cells = (row.figure, row.value, row.spread, row.derived, row.target or "-", status)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines).strip() + "\n"


def rows_as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    rows = build_rows(data["sections"])
    print(render_markdown(rows) if args.markdown else render_text(rows))


if __name__ == "__main__":
    main()
