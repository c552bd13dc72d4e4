"""S3 through a moto server on loopback: ckpthooks save and restore against raw s3fs put and get
of the same bytes (``fs.pipe_file`` / ``fs.cat_file``), interleaved, repeated.

The server is the test suite's (``tests/s3_server.py``'s ``MotoServer``): ``moto_server`` in a
subprocess on 127.0.0.1. It is a Python process on the same cores as the client, so absolute
throughputs say little about real S3; the ratios compare ckpthooks with s3fs on equal terms.

    python -m benchmarks.s3 --size quick --workdir /tmp/x --out /tmp/x/s3.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, progress, section_args, write_json
from benchmarks.state import build_state, build_tiny

BUCKET = "ckpthooks-bench"


def main() -> None:
    args = section_args(__doc__ or "")
    reps = args.config["reps"]
    sys.path.insert(0, str(ROOT / "tests"))
    import fsspec
    from s3_server import MotoServer, create_bucket

    from ckpthooks import Checkpointer

    progress(f"S3 through moto ({args.config['s3'] >> 20} MiB x {reps})")
    state = build_state(args.config["s3"])
    tiny = build_tiny()
    log = Path(args.workdir) / "moto.log"
    server = MotoServer(log).start()
    result: dict[str, Any] = {"reps": reps}
    try:
        create_bucket(server.port, BUCKET)
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": server.endpoint, "region_name": "us-east-1"},
        }
        fs = fsspec.filesystem("s3", **options)
        root = f"s3://{BUCKET}/run"

        def make(st: Any) -> Any:
            ckpt = Checkpointer(default_root_dir=root, storage_options=options, preemption_signals=None)
            return ckpt.track(model=st.model, optimizers=st.optimizer)

        warm = make(tiny)  # connections, imports, first calls
        warm.save_checkpoint(f"{root}/warm.ckpt")
        warm.restore(f"{root}/warm.ckpt")
        ckpt = make(state)
        ckpt.save_checkpoint(f"{root}/template.ckpt")
        data = fs.cat_file(f"{BUCKET}/run/template.ckpt")  # the very bytes ckpthooks writes
        fs.pipe_file(f"{BUCKET}/raw/warm", data[: 1 << 20])
        fs.cat_file(f"{BUCKET}/raw/warm")
        result["bytes"] = len(data)
        result["state_bytes"] = state.nbytes()
        samples: dict[str, list[float]] = {"ckpthooks_save": [], "raw_put": [], "ckpthooks_restore": [], "raw_get": []}
        for rep in range(reps):
            path = f"{root}/save-{rep}.ckpt"
            raw = f"{BUCKET}/raw/put-{rep}"
            order = ("ckpthooks", "raw") if rep % 2 == 0 else ("raw", "ckpthooks")
            for who in order:
                start = time.perf_counter()
                if who == "raw":
                    fs.pipe_file(raw, data)
                else:
                    ckpt.save_checkpoint(path)
                samples["raw_put" if who == "raw" else "ckpthooks_save"].append(time.perf_counter() - start)
            for who in reversed(order):
                start = time.perf_counter()
                if who == "raw":
                    got = fs.cat_file(raw)
                    assert len(got) == len(data)
                    del got
                else:
                    ckpt.restore(path)
                samples["raw_get" if who == "raw" else "ckpthooks_restore"].append(time.perf_counter() - start)
            fs.rm(raw)
            ckpt.store.remove(path)
        result["seconds"] = samples
    finally:
        server.stop()
    write_json(args.out, result)


if __name__ == "__main__":
    main()
