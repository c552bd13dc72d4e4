"""Checkpoints on S3 (or any S3-compatible store: MinIO, Ceph, moto) with ckpthooks.

    pip install s3fs
    python examples/s3_checkpoints.py --bucket my-bucket --prefix runs/s3-demo --epochs 3
    python examples/s3_checkpoints.py --endpoint-url http://127.0.0.1:9000 --bucket test --create-bucket

Credentials come from the usual places (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
~/.aws/credentials, an instance role): ckpthooks hands the storage options to fsspec's s3fs. Run it
twice: the second run resumes from the newest committed checkpoint on S3. Then look at the bucket
from the shell:

    ckpthooks ls s3://my-bucket/runs/s3-demo
    ckpthooks verify s3://my-bucket/runs/s3-demo -o 'client_kwargs={"endpoint_url": "http://127.0.0.1:9000"}'
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from torch import nn

from ckpthooks import Checkpointer, ModelCheckpoint


def storage_options(endpoint_url: str | None) -> dict[str, Any]:
    """s3fs options; an endpoint URL points s3fs at an S3-compatible server instead of AWS."""
    options: dict[str, Any] = {}
    if endpoint_url:
        options["client_kwargs"] = {"endpoint_url": endpoint_url}
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="runs/s3-demo")
    parser.add_argument("--endpoint-url", help="an S3-compatible server, e.g. http://127.0.0.1:9000")
    parser.add_argument("--create-bucket", action="store_true", help="create the bucket when it does not exist")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    root = f"s3://{args.bucket}/{args.prefix}"
    options = storage_options(args.endpoint_url)
    if args.create_bucket:
        import fsspec

        fs = fsspec.filesystem("s3", **options)
        if not fs.exists(args.bucket):
            fs.mkdir(args.bucket)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 8), torch.randn(64, 1)

    ckpt = Checkpointer(
        default_root_dir=root,
        storage_options=options,  # used for every read, write, listing and delete
        callbacks=[ModelCheckpoint(monitor="loss", save_top_k=2, save_last=True)],
    )
    ckpt.track(model=model, optimizers=optimizer)

    @ckpt.loop(max_epochs=args.epochs, ckpt_path="last")
    def train(epoch: int) -> float:
        for batch in ckpt.batches(range(4)):
            rows = slice(batch * 16, (batch + 1) * 16)
            loss = nn.functional.mse_loss(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ckpt.log("loss", loss.item())
        print(f"epoch {epoch}: loss={loss.item():.4f}", flush=True)
        return loss.item()

    result = train()
    if result.restore is not None:
        print(f"resumed: {result.restore.summary()}")
    for item in ckpt.committed_checkpoints():
        print(f"committed {item.path} (step {item.manifest.global_step}, {item.manifest.size} bytes)")
    ckpt.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
