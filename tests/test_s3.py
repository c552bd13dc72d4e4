"""Checkpoints on S3, against a real S3-compatible server (moto) on loopback.

Every request goes through :class:`tests.s3_server.FaultProxy`, which records it (so the tests see the
commit protocol on the wire: marker, data, manifest, in that order) and can answer with injected
HTTP 500/503 errors or stall past the client's read timeout.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from ckpthooks import Checkpointer, CorruptCheckpointError, ModelCheckpoint, StorageError, TorchCheckpointIO
from ckpthooks._catalog import iter_committed, read_manifest, verify_checkpoint, write_manifest
from ckpthooks._commit import PENDING_SUFFIX
from ckpthooks._io import paths, retry
from ckpthooks._io import staging as io_staging
from ckpthooks._io.hashing import new_hasher
from ckpthooks._io.staging import STAGING_DIR_ENV
from ckpthooks._manifest import MANIFEST_SUFFIX, Manifest
from ckpthooks.cli import main
from tests.helpers import TinyNet, assert_state_equal
from tests.s3_server import FaultProxy, MotoServer, create_bucket, running_s3, storage_options

s3fs = pytest.importorskip("s3fs", reason="the S3 tests need the test extra: pip install -e '.[test]'")
pytest.importorskip("moto", reason="the S3 tests need the test extra: pip install -e '.[test]'")

BUCKET = "bucket"
#: A test still running after this many seconds has its proxy connections cut, so that it fails
#: instead of hanging (each test takes a few seconds).
TEST_DEADLINE = 60.0
ROOT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s3_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, FaultProxy, Any]]:
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as patch:
        # s3fs repeats some failed requests itself (a class attribute, not a storage option): once is
        # enough here, so that every injected fault reaches ckpthooks and the attempts can be counted
        patch.setattr(s3fs.S3FileSystem, "retries", 1)
        for name in ("NO_PROXY", "no_proxy"):  # an HTTP proxy of the machine must not sit in between
            patch.setenv(name, ",".join(filter(None, ["127.0.0.1", "localhost", os.environ.get(name)])))
        with running_s3(log_path) as (moto, proxy):
            create_bucket(moto.port, BUCKET)
            direct = s3fs.S3FileSystem(
                skip_instance_cache=True, use_listings_cache=False, **storage_options(moto.endpoint)
            )
            yield moto, proxy, direct


@dataclass
class S3:
    root: str  # s3://bucket/<test>/run
    options: dict[str, Any]  # through the proxy
    proxy: FaultProxy
    moto: MotoServer
    direct: Any  # an s3fs instance of its own, straight to moto, that caches no listing: the ground truth

    def url(self, name: str) -> str:
        return f"{self.root}/{name}"

    def objects(self, sub: str = "") -> set[str]:
        """Names (relative to the root) of every object below it."""
        base = paths.fs_path(self.direct, self.root)
        found = self.direct.find(f"{base}/{sub}".rstrip("/"))
        return {name[len(base) + 1 :] for name in found}

    def requests(self, method: str | None = None, suffix: str | None = None) -> list[tuple[str, str, str]]:
        """``(method, name relative to the root, outcome)`` of the requests the proxy saw."""
        prefix = "/" + paths.fs_path(self.direct, self.root) + "/"
        return [
            (r.method, r.path[len(prefix) :], r.outcome)
            for r in self.proxy.requests(method, suffix)
            if r.path.startswith(prefix)
        ]


@pytest.fixture
def s3(s3_servers: tuple[MotoServer, FaultProxy, Any], request: pytest.FixtureRequest) -> Iterator[S3]:
    moto, proxy, direct = s3_servers
    proxy.reset()
    forget_cached_listings()  # every test has a folder of its own, and no listing cached by another
    previous = retry.set_default_retry(retry.RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05))
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)
    overdue = threading.Event()

    def deadline() -> None:  # fail rather than hang: the client gets connection errors from now on
        overdue.set()
        proxy.cut_connections()

    watchdog = threading.Timer(TEST_DEADLINE, deadline)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield S3(f"s3://{BUCKET}/{name}/run", storage_options(proxy.endpoint), proxy, moto, direct)
    finally:
        watchdog.cancel()
        retry.set_default_retry(previous)
        proxy.reset()
        forget_cached_listings()
    if overdue.is_set():
        pytest.fail(f"{request.node.name} ran past {TEST_DEADLINE:.0f} s: its S3 connections were cut")


def forget_cached_listings() -> None:
    """Drop the listings every cached s3fs instance holds (cheaper than new instances: building an
    s3fs client parses botocore's S3 model, about half a second)."""
    for instance in list(s3fs.S3FileSystem._cache.values()):
        instance.invalidate_cache()


def new_checkpointer(s3: S3, *callbacks: Any, model: torch.nn.Module | None = None, **kwargs: Any) -> Checkpointer:
    enable = kwargs.pop("enable_checkpointing", bool(callbacks))
    ckpt = Checkpointer(
        s3.root, callbacks=list(callbacks), storage_options=s3.options, enable_checkpointing=enable, **kwargs
    )
    return ckpt.track(model=model if model is not None else TinyNet())


def train(ckpt: Checkpointer, losses: list[float], model: torch.nn.Module, ckpt_path: str | None = None) -> Any:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt.track(optimizers=optimizer)

    def epoch_fn(epoch: int) -> None:
        for _ in ckpt.batches(range(2)):
            loss = model(torch.ones(2, 4)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ckpt.log("loss", losses[epoch])

    return ckpt.fit(epoch_fn, max_epochs=len(losses), ckpt_path=ckpt_path)


def retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ckpthooks._io.retry" and r.levelno == logging.WARNING]


def cli_options(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        args += ["--storage-option", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args


# ---------------------------------------------------------------------------- save, list, load


def test_manual_saves_commit_on_the_wire_in_order_and_load_back(s3: S3) -> None:
    model = TinyNet()
    ckpt = new_checkpointer(s3, model=model)
    ckpt.save_checkpoint(s3.url("a.ckpt"))
    ckpt.progress.global_step = 7
    ckpt.save_checkpoint(s3.url("sub/b.ckpt"))

    assert s3.objects() == {"a.ckpt", "a.ckpt" + MANIFEST_SUFFIX, "sub/b.ckpt", "sub/b.ckpt" + MANIFEST_SUFFIX}
    # object stores have no rename: marker, data straight to the final key, manifest last, marker gone
    writes = [(m, name) for m, name, _ in s3.requests() if m in ("PUT", "DELETE") and "a.ckpt" in name]
    assert writes == [
        ("PUT", ".a.ckpt" + PENDING_SUFFIX),
        ("PUT", "a.ckpt"),
        ("PUT", "a.ckpt" + MANIFEST_SUFFIX),
        ("DELETE", ".a.ckpt" + PENDING_SUFFIX),
    ]
    listed = {item.path: item.manifest.global_step for item in iter_committed(s3.root, s3.options)}
    assert listed == {s3.url("a.ckpt"): 0, s3.url("sub/b.ckpt"): 7}

    fresh_model = TinyNet()
    assert not torch.equal(fresh_model.l1.weight, model.l1.weight)
    report = new_checkpointer(s3, model=fresh_model).restore(s3.url("sub/b.ckpt"))
    assert report is not None and report.global_step == 7 and "model" in report.restored
    assert_state_equal(fresh_model.state_dict(), model.state_dict())


def test_storage_options_reach_s3fs(s3: S3) -> None:
    fs = paths.filesystem(s3.root, s3.options)
    assert isinstance(fs, s3fs.S3FileSystem)
    assert fs.client_kwargs["endpoint_url"] == s3.proxy.endpoint
    new_checkpointer(s3).save_checkpoint(s3.url("x.ckpt"))
    # the only way to the proxy is the endpoint in the storage options
    assert ("PUT", "x.ckpt", "200") in s3.requests("PUT")
    nowhere = {**s3.options, "client_kwargs": {**s3.options["client_kwargs"], "endpoint_url": "http://127.0.0.1:9"}}
    with pytest.raises(StorageError, match="retried 3 times"):  # nothing listens there
        Checkpointer(s3.root, storage_options=nowhere, enable_checkpointing=False).track(
            model=TinyNet()
        ).save_checkpoint(s3.url("y.ckpt"))


def test_model_checkpoint_prunes_exactly_the_displaced_files_manifest_first(s3: S3) -> None:
    model = TinyNet()
    mc = ModelCheckpoint(filename="{epoch}", monitor="loss", save_top_k=2, save_last=True)
    ckpt = new_checkpointer(s3, mc, model=model)
    train(ckpt, [3.0, 1.0, 2.0, 0.5], model)

    assert s3.objects("checkpoints") == {
        f"checkpoints/{name}{suffix}"
        for name in ("epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt")
        for suffix in ("", MANIFEST_SUFFIX)
    }
    assert mc.best_k_models == {s3.url("checkpoints/epoch=1.ckpt"): 1.0, s3.url("checkpoints/epoch=3.ckpt"): 0.5}
    deletes = [
        name for _, name, _ in s3.requests("DELETE")
        if not name.endswith(PENDING_SUFFIX) and not name.startswith("checkpoints/last.ckpt")
    ]
    assert deletes == [
        "checkpoints/epoch=0.ckpt" + MANIFEST_SUFFIX,
        "checkpoints/epoch=0.ckpt",
        "checkpoints/epoch=2.ckpt" + MANIFEST_SUFFIX,
        "checkpoints/epoch=2.ckpt",
    ]
    # a prune happens only after its replacement is committed
    log = [(m, name) for m, name, _ in s3.requests() if m in ("PUT", "DELETE")]
    assert log.index(("PUT", "checkpoints/epoch=2.ckpt" + MANIFEST_SUFFIX)) < log.index(
        ("DELETE", "checkpoints/epoch=0.ckpt" + MANIFEST_SUFFIX)
    )

    # a new process finds "last" and "best" from the manifests alone
    again = new_checkpointer(s3, ModelCheckpoint(filename="{epoch}", monitor="loss", save_top_k=2, save_last=True))
    assert again.find_checkpoint("last") == s3.url("checkpoints/last.ckpt")
    assert again.find_checkpoint("best") == s3.url("checkpoints/epoch=3.ckpt")
    fresh = TinyNet()
    again.track(model=fresh, optimizers=torch.optim.SGD(fresh.parameters(), lr=0.1))
    report = again.restore("best")
    assert report is not None and (report.epoch, report.global_step) == (3, 8)
    assert_state_equal(fresh.state_dict(), model.state_dict())


def test_the_checkpoint_a_run_resumed_from_is_never_deleted(s3: S3) -> None:
    def policy() -> ModelCheckpoint:
        return ModelCheckpoint(filename="{epoch}", monitor="loss", save_top_k=1)

    model = TinyNet()
    train(new_checkpointer(s3, policy(), model=model), [1.0, 2.0], model)
    assert s3.objects("checkpoints") == {"checkpoints/epoch=0.ckpt", "checkpoints/epoch=0.ckpt" + MANIFEST_SUFFIX}

    s3.proxy.reset()
    resumed = TinyNet()
    ckpt = new_checkpointer(s3, policy(), model=resumed)
    result = train(ckpt, [1.0, 0.5, 0.4], resumed, ckpt_path="best")
    assert result.restore.path == s3.url("checkpoints/epoch=0.ckpt") and result.start_epoch == 1
    # epoch=1 displaced epoch=0 (the resume file: kept), then epoch=2 displaced epoch=1 (deleted)
    assert [name for _, name, _ in s3.requests("DELETE") if not name.endswith(PENDING_SUFFIX)] == [
        "checkpoints/epoch=1.ckpt" + MANIFEST_SUFFIX,
        "checkpoints/epoch=1.ckpt",
    ]
    assert s3.objects("checkpoints") == {
        f"checkpoints/{name}{suffix}" for name in ("epoch=0.ckpt", "epoch=2.ckpt") for suffix in ("", MANIFEST_SUFFIX)
    }
    verify_checkpoint(s3.url("checkpoints/epoch=0.ckpt"), storage_options=s3.options)


def test_listing_sees_what_another_client_wrote_after_a_cached_listing(s3: S3) -> None:
    mine = new_checkpointer(s3)
    mine.save_checkpoint(s3.url("a.ckpt"))
    mine.save_checkpoint(s3.url("sub/a.ckpt"))
    assert mine.find_checkpoint("last") == s3.url("a.ckpt")
    fs = paths.filesystem(s3.root, s3.options)
    assert fs.dircache.use_listings_cache  # s3fs's default: listings are cached per instance
    for folder in ("", "/sub"):  # cache both listings now
        fs.ls(paths.fs_path(fs, s3.root + folder))

    # another process, as far as caches go: other options, so an s3fs instance (and listings) of its own
    elsewhere = {**s3.options, "config_kwargs": {**s3.options["config_kwargs"], "user_agent_extra": "other"}}
    assert paths.filesystem(s3.root, elsewhere) is not fs
    other = Checkpointer(s3.root, storage_options=elsewhere, enable_checkpointing=False).track(model=TinyNet())
    other.progress.global_step = 5
    other.save_checkpoint(s3.url("b.ckpt"))
    other.save_checkpoint(s3.url("sub/b.ckpt"))
    assert "b.ckpt" not in {paths.basename(p) for p in fs.ls(paths.fs_path(fs, s3.root))}  # stale

    assert mine.find_checkpoint("last") == s3.url("b.ckpt")
    listed = [item.path for item in iter_committed(s3.root, s3.options)]
    assert listed == [s3.url(name) for name in ("a.ckpt", "b.ckpt", "sub/a.ckpt", "sub/b.ckpt")]
    verify_checkpoint(s3.url("sub/b.ckpt"), storage_options=s3.options)  # its size is not looked up in a stale listing


def test_data_without_a_manifest_is_not_last(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = new_checkpointer(s3)
    ckpt.save_checkpoint(s3.url("good.ckpt"))

    def crash(*args: Any, **kwargs: Any) -> None:
        raise StorageError("injected: the process died before the commit")

    monkeypatch.setattr("ckpthooks._commit.write_manifest", crash)
    ckpt.progress.global_step = 10
    with pytest.raises(StorageError, match="injected"):
        ckpt.save_checkpoint(s3.url("newer.ckpt"))
    monkeypatch.undo()

    assert s3.objects() == {
        "good.ckpt", "good.ckpt" + MANIFEST_SUFFIX, "newer.ckpt", ".newer.ckpt" + PENDING_SUFFIX,
    }
    again = new_checkpointer(s3)
    assert again.find_checkpoint("last") == s3.url("good.ckpt")
    # this process wrote the marker and is alive: its save could still be in flight, so it stays
    assert ".newer.ckpt" + PENDING_SUFFIX in s3.objects() and "newer.ckpt" in s3.objects()


# ---------------------------------------------------------------------------- leftovers of crashes

CRASHING_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from ckpthooks import Checkpointer
    import ckpthooks._commit as commit

    root, options = sys.argv[1], json.loads(sys.argv[2])
    ckpt = Checkpointer(root, storage_options=options, enable_checkpointing=False)
    ckpt.track(model=torch.nn.Linear(4, 2))
    ckpt.save_checkpoint(root + "/good.ckpt")
    commit.remove_pending_marker = lambda *a, **k: None  # dies right after the commit of the next one
    ckpt.save_checkpoint(root + "/committed.ckpt")

    def die(*args, **kwargs):
        os._exit(17)  # dies with the data written, before the commit

    commit.write_manifest = die
    ckpt.progress.global_step = 9
    ckpt.save_checkpoint(root + "/crashed.ckpt")
    """
)


def test_a_crashed_remote_save_is_cleaned_up_at_the_next_start(s3: S3, caplog: pytest.LogCaptureFixture) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, s3.root, json.dumps(s3.options)],
        cwd=ROOT_DIR, capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 17, child.stderr
    s3.direct.pipe_file(paths.fs_path(s3.direct, s3.url("foreign.ckpt")), b"not ours")
    s3.direct.pipe_file(paths.fs_path(s3.direct, s3.url(".foreign.ckpt.ckpthooks-tmp-1-x-y")), b"not ours")
    committed = {"good.ckpt", "good.ckpt" + MANIFEST_SUFFIX, "committed.ckpt", "committed.ckpt" + MANIFEST_SUFFIX}
    untouchable = {"foreign.ckpt", ".foreign.ckpt.ckpthooks-tmp-1-x-y"}
    assert s3.objects() == committed | untouchable | {
        ".committed.ckpt" + PENDING_SUFFIX, "crashed.ckpt", ".crashed.ckpt" + PENDING_SUFFIX,
    }

    s3.proxy.reset()
    new_checkpointer(s3, model=torch.nn.Linear(4, 2))  # the next start (rank 0)

    assert s3.objects() == committed | untouchable
    assert sorted(name for m, name, _ in s3.requests("DELETE")) == [
        ".committed.ckpt" + PENDING_SUFFIX, ".crashed.ckpt" + PENDING_SUFFIX, "crashed.ckpt",
    ]
    data_first = [name for _, name, _ in s3.requests("DELETE") if "crashed" in name]
    assert data_first == ["crashed.ckpt", ".crashed.ckpt" + PENDING_SUFFIX]
    assert any("crashed.ckpt, left uncommitted by an interrupted save" in r.getMessage() for r in caplog.records)
    for name in ("good.ckpt", "committed.ckpt"):
        verify_checkpoint(s3.url(name), storage_options=s3.options)


# ---------------------------------------------------------------------------- the CLI


def test_cli_verify_an_s3_folder_with_storage_options(s3: S3) -> None:
    ckpt = new_checkpointer(s3)
    ckpt.save_checkpoint(s3.url("a.ckpt"))
    ckpt.save_checkpoint(s3.url("nested/b.ckpt"))
    options = cli_options(s3.options)

    result = CliRunner().invoke(main, ["verify", s3.root, "--json", "--deep", *options])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)["results"]
    assert [(r["path"], r["ok"]) for r in records] == [(s3.url("a.ckpt"), True), (s3.url("nested/b.ckpt"), True)]

    one = CliRunner().invoke(main, ["verify", s3.url("a.ckpt"), *options])
    assert one.exit_code == 0 and "1 ok, 0 failed" in one.output

    target = paths.fs_path(s3.direct, s3.url("a.ckpt"))
    data = bytearray(s3.direct.cat_file(target))
    data[-100] ^= 0xFF
    s3.direct.pipe_file(target, bytes(data))
    broken = CliRunner().invoke(main, ["verify", s3.root, *options])
    assert broken.exit_code == 1
    assert "checksum" in broken.output and "1 ok, 1 failed" in broken.output

    bad = CliRunner().invoke(main, ["verify", s3.root, "--storage-option", "no-equals-sign"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


# ---------------------------------------------------------------------------- transient faults


def test_a_save_succeeds_after_two_injected_503s(s3: S3, caplog: pytest.LogCaptureFixture) -> None:
    model = TinyNet()
    rule = s3.proxy.fail(2, status=503, method="PUT", suffix="/a.ckpt")
    new_checkpointer(s3, model=model).save_checkpoint(s3.url("a.ckpt"))

    assert rule.fired == 2
    assert [outcome for _, _, outcome in s3.requests("PUT", "/a.ckpt")] == ["fault 503", "fault 503", "200"]
    warnings = retry_warnings(caplog)
    assert len(warnings) == 2
    assert "attempt 1 of 4" in warnings[0] and "attempt 2 of 4" in warnings[1]
    assert all(f"write {s3.url('a.ckpt')}" in w for w in warnings)
    manifest = verify_checkpoint(s3.url("a.ckpt"), storage_options=s3.options)
    assert manifest.size == s3.direct.size(paths.fs_path(s3.direct, s3.url("a.ckpt")))
    assert ".a.ckpt" + PENDING_SUFFIX not in s3.objects()


def test_manifest_and_delete_and_load_faults_are_retried(s3: S3, caplog: pytest.LogCaptureFixture) -> None:
    model = TinyNet()
    ckpt = new_checkpointer(s3, model=model)
    write = s3.proxy.fail(1, status=500, method="PUT", suffix="/a.ckpt" + MANIFEST_SUFFIX)
    ckpt.save_checkpoint(s3.url("a.ckpt"))
    assert write.fired == 1 and read_manifest(s3.url("a.ckpt"), s3.options) is not None

    reads = s3.proxy.fail(2, status=503, method="GET", suffix="/a.ckpt")
    manifest_read = s3.proxy.fail(1, status=503, method="GET", suffix="/a.ckpt" + MANIFEST_SUFFIX)
    fresh = TinyNet()
    report = new_checkpointer(s3, model=fresh).restore(s3.url("a.ckpt"))
    assert report is not None and reads.fired == 2 and manifest_read.fired == 1
    assert_state_equal(fresh.state_dict(), model.state_dict())

    deletes = s3.proxy.fail(1, status=503, method="DELETE", suffix="/a.ckpt" + MANIFEST_SUFFIX)
    data_delete = s3.proxy.fail(1, status=500, method="DELETE", suffix="/a.ckpt")
    assert ckpt.remove_checkpoint(s3.url("a.ckpt")) is True
    assert deletes.fired == 1 and data_delete.fired == 1
    assert s3.objects() == set()
    assert len(retry_warnings(caplog)) == 6


def test_more_faults_than_attempts_raise_storage_error_and_keep_what_was_committed(s3: S3) -> None:
    ckpt = new_checkpointer(s3)
    ckpt.save_checkpoint(s3.url("good.ckpt"))
    s3.proxy.fail(10, status=503, method="PUT", suffix="/bad.ckpt")
    ckpt.progress.global_step = 3

    with pytest.raises(StorageError, match=r"retried 3 times, 4 attempts") as failure:
        ckpt.save_checkpoint(s3.url("bad.ckpt"))
    assert s3.url("bad.ckpt") in str(failure.value)

    assert [outcome for _, _, outcome in s3.requests("PUT", "/bad.ckpt")] == ["fault 503"] * 4
    assert s3.requests("PUT", "/bad.ckpt" + MANIFEST_SUFFIX) == []
    assert read_manifest(s3.url("bad.ckpt"), s3.options) is None
    assert s3.objects() == {"good.ckpt", "good.ckpt" + MANIFEST_SUFFIX, ".bad.ckpt" + PENDING_SUFFIX}
    assert new_checkpointer(s3).find_checkpoint("last") == s3.url("good.ckpt")
    result = CliRunner().invoke(main, ["verify", s3.root, "--json", *cli_options(s3.options)])
    assert result.exit_code == 0, result.output
    assert [r["path"] for r in json.loads(result.output)["results"]] == [s3.url("good.ckpt")]


def test_a_failed_multipart_upload_is_aborted_not_published_and_the_save_retried(s3: S3) -> None:
    s3.options["default_block_size"] = 5 * 2**20  # S3's smallest part: a 6 MB checkpoint takes two
    model = torch.nn.Linear(1500, 1000)
    ckpt = new_checkpointer(s3, model=model)
    part = s3.proxy.fail(1, status=503, method="PUT", suffix="/big.ckpt", query="partNumber=1")
    ckpt.save_checkpoint(s3.url("big.ckpt"))

    assert part.fired == 1
    uploads = [(m, outcome) for m, _, outcome in s3.requests(suffix="/big.ckpt") if m in ("POST", "PUT", "DELETE")]
    aborted = uploads.index(("DELETE", "204"))
    first, retry = uploads[: aborted + 1], uploads[aborted + 1 :]
    assert first[0] == ("POST", "200")  # first upload started
    assert ("PUT", "fault 503") in first  # its first part failed (the second may have gone out meanwhile)
    assert set(first[1:-1]) <= {("PUT", "fault 503"), ("PUT", "200")}
    # so it was aborted: no truncated object under the final name; the retry streams it all again
    assert retry == [("POST", "200"), ("PUT", "200"), ("PUT", "200"), ("POST", "200")]
    assert s3.direct.list_multipart_uploads(BUCKET) == []
    fresh = torch.nn.Linear(1500, 1000)
    new_checkpointer(s3, model=fresh).restore(s3.url("big.ckpt"))
    assert torch.equal(fresh.weight, model.weight)


def test_the_backend_retry_policy_overrides_the_default(s3: S3) -> None:
    ckpt = new_checkpointer(s3, checkpoint_io=TorchCheckpointIO(retry=retry.RetryPolicy(attempts=2, base_delay=0)))
    s3.proxy.fail(5, status=500, method="PUT", suffix="/a.ckpt")
    with pytest.raises(StorageError, match="retried 1 time, 2 attempts"):
        ckpt.save_checkpoint(s3.url("a.ckpt"))
    assert len(s3.requests("PUT", "/a.ckpt")) == 2


def test_a_read_timeout_is_retried(s3: S3, caplog: pytest.LogCaptureFixture) -> None:
    s3.options = storage_options(s3.proxy.endpoint, read_timeout=1, connect_timeout=1)
    stall = s3.proxy.stall(1, seconds=2.5, method="PUT", suffix="/slow.ckpt")
    new_checkpointer(s3).save_checkpoint(s3.url("slow.ckpt"))

    assert stall.fired == 1
    assert [outcome for _, _, outcome in s3.requests("PUT", "/slow.ckpt")] == ["stall", "200"]
    (warning,) = retry_warnings(caplog)
    assert "attempt 1 of 4" in warning and "timeout" in warning.lower()
    verify_checkpoint(s3.url("slow.ckpt"), storage_options=s3.options)


def test_a_failed_policy_save_with_on_save_error_log_keeps_training_and_bookkeeping(
    s3: S3, caplog: pytest.LogCaptureFixture
) -> None:
    model = TinyNet()
    mc = ModelCheckpoint(filename="{epoch}", monitor="loss", save_top_k=2, save_last=True)
    ckpt = new_checkpointer(s3, mc, model=model, on_save_error="log")
    s3.proxy.fail(10, status=503, method="PUT", suffix="/epoch=1.ckpt")

    result = train(ckpt, [3.0, 2.0, 1.0], model)

    assert result.epochs_run == 3 and ckpt.global_step == 6
    assert mc.best_k_models == {s3.url("checkpoints/epoch=0.ckpt"): 3.0, s3.url("checkpoints/epoch=2.ckpt"): 1.0}
    assert mc.last_model_path == s3.url("checkpoints/last.ckpt")
    assert any("checkpoint save failed at step 4" in r.getMessage() for r in caplog.records)
    committed = {item.path: item.manifest.global_step for item in iter_committed(s3.url("checkpoints"), s3.options)}
    assert committed == {
        s3.url("checkpoints/epoch=0.ckpt"): 2,
        s3.url("checkpoints/epoch=2.ckpt"): 6,
        s3.url("checkpoints/last.ckpt"): 6,
    }
    assert "checkpoints/epoch=1.ckpt" not in s3.objects()  # no PUT ever got through
    assert new_checkpointer(s3, ModelCheckpoint(filename="{epoch}", monitor="loss", save_top_k=2)).find_checkpoint(
        "best"
    ) == s3.url("checkpoints/epoch=2.ckpt")


def test_a_save_makes_no_requests_beyond_the_commit_protocol(s3: S3) -> None:
    """An object store has no folders: nothing is created above the key, no bucket lookup. A new
    checkpoint costs: the look for an old manifest, the pending marker, the data, the manifest, the
    marker's removal."""
    ckpt = new_checkpointer(s3)
    s3.proxy.reset()
    ckpt.save_checkpoint(s3.url("sub/a.ckpt"))
    prefix = "/" + paths.fs_path(s3.direct, s3.root) + "/"
    seen = [(r.method, r.path.removeprefix(prefix)) for r in s3.proxy.requests()]
    assert seen == [
        ("GET", "sub/a.ckpt" + MANIFEST_SUFFIX),
        ("PUT", "sub/.a.ckpt" + PENDING_SUFFIX),
        ("PUT", "sub/a.ckpt"),
        ("PUT", "sub/a.ckpt" + MANIFEST_SUFFIX),
        ("DELETE", "sub/.a.ckpt" + PENDING_SUFFIX),
    ]


# ---------------------------------------------------------------------------- concurrent multipart upload


def _counting_calls(fs: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Wrap ``fs._call_s3`` to count calls per method and the most upload_part calls at once."""
    seen: dict[str, Any] = {"calls": [], "now": 0, "most": 0}
    original = fs._call_s3

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        seen["calls"].append(method)
        if method == "upload_part":
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
        try:
            return await original(method, *args, **kwargs)
        finally:
            if method == "upload_part":
                seen["now"] -= 1

    monkeypatch.setattr(fs, "_call_s3", call)
    return seen


def test_a_large_object_uploads_several_parts_at_once_and_at_most_the_bound(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpthooks._io.multipart import ConcurrentUpload

    fs = paths.filesystem(s3.root, s3.options)
    seen = _counting_calls(fs, monkeypatch)
    data = os.urandom(6 * 5 * 2**20 + 123)  # six full 5 MiB parts and a short last one
    target = paths.fs_path(fs, s3.url("multi.bin"))
    upload = ConcurrentUpload(fs, target, part_size=5 * 2**20, concurrency=3)
    view = memoryview(data)
    for start in range(0, len(data), 3 * 2**20):  # writes that do not line up with the parts
        upload.write(view[start : start + 3 * 2**20])
    upload.close()

    assert seen["calls"].count("upload_part") == 7
    assert 1 < seen["most"] <= 3  # parts overlap, within the bound
    assert s3.direct.cat_file(paths.fs_path(s3.direct, s3.url("multi.bin"))) == data


def test_an_object_smaller_than_a_part_is_one_put(s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    from ckpthooks._io.multipart import ConcurrentUpload

    fs = paths.filesystem(s3.root, s3.options)
    seen = _counting_calls(fs, monkeypatch)
    upload = ConcurrentUpload(fs, paths.fs_path(fs, s3.url("small.bin")), part_size=5 * 2**20)
    upload.write(b"tiny")
    upload.close()
    assert seen["calls"] == ["put_object"]
    assert s3.direct.cat_file(paths.fs_path(s3.direct, s3.url("small.bin"))) == b"tiny"


def test_a_discarded_upload_is_aborted_and_publishes_nothing(s3: S3) -> None:
    from ckpthooks._io.multipart import ConcurrentUpload

    fs = paths.filesystem(s3.root, s3.options)
    upload = ConcurrentUpload(fs, paths.fs_path(fs, s3.url("gone.bin")), part_size=5 * 2**20)
    upload.write(os.urandom(11 * 2**20))  # two parts out
    upload.discard()
    assert "gone.bin" not in s3.objects()
    assert s3.direct.list_multipart_uploads(BUCKET) == []


# ---------------------------------------------------------------------------- restore: one verified download


@pytest.fixture
def staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "staging"
    folder.mkdir()
    monkeypatch.setenv(STAGING_DIR_ENV, str(folder))
    return folder


def downloaded(s3: S3, name: str) -> int:
    """Bytes of the object ``name`` the client got back (GET responses)."""
    return sum(r.sent for r in s3.proxy.requests("GET", "/" + name))


def test_a_verified_restore_downloads_the_checkpoint_once(s3: S3, staging: Path) -> None:
    """Verification and loading read one local copy: the object's bytes cross the wire once
    (they crossed twice, once to check the checksum and once to load)."""
    model = torch.nn.Linear(256, 256)
    ckpt = new_checkpointer(s3, model=model)
    ckpt.save_checkpoint(s3.url("a.ckpt"))
    manifest = read_manifest(s3.url("a.ckpt"), s3.options)
    assert manifest is not None and manifest.size > 256 * 256 * 4
    s3.proxy.reset()
    fresh_model = torch.nn.Linear(256, 256)
    report = new_checkpointer(s3, model=fresh_model).restore(s3.url("a.ckpt"))
    assert report is not None and report.path == s3.url("a.ckpt")
    assert_state_equal(fresh_model.state_dict(), model.state_dict())
    assert downloaded(s3, "a.ckpt") == manifest.size
    assert os.listdir(staging) == []  # the copy is gone


def test_a_corrupt_remote_checkpoint_fails_on_its_copy_and_leaves_none(s3: S3, staging: Path) -> None:
    ckpt = new_checkpointer(s3)
    ckpt.save_checkpoint(s3.url("a.ckpt"))
    target = paths.fs_path(s3.direct, s3.url("a.ckpt"))
    data = bytearray(s3.direct.cat_file(target))
    data[len(data) // 2] ^= 0xFF
    s3.direct.pipe_file(target, bytes(data))
    with pytest.raises(CorruptCheckpointError, match=re.escape(s3.url("a.ckpt")) + ".*checksum"):
        new_checkpointer(s3).restore(s3.url("a.ckpt"))
    assert os.listdir(staging) == []


def test_without_room_for_a_copy_a_restore_checks_and_reads_the_object(
    s3: S3, staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_staging, "HEADROOM", 1 << 62)  # more free space than any disk has
    model = TinyNet()
    new_checkpointer(s3, model=model).save_checkpoint(s3.url("a.ckpt"))
    manifest = read_manifest(s3.url("a.ckpt"), s3.options)
    assert manifest is not None
    s3.proxy.reset()
    fresh = TinyNet()
    new_checkpointer(s3, model=fresh).restore(s3.url("a.ckpt"))
    assert_state_equal(fresh.state_dict(), model.state_dict())
    assert downloaded(s3, "a.ckpt") >= 2 * manifest.size  # checked, then read
    assert os.listdir(staging) == []


def test_a_load_error_of_the_copy_names_the_remote_checkpoint(s3: S3, staging: Path) -> None:
    """A committed object whose bytes are intact but not a checkpoint: the error names the object,
    not the local copy."""
    url = s3.url("a.ckpt")
    payload = b"not a checkpoint at all" * 100
    s3.direct.pipe_file(paths.fs_path(s3.direct, url), payload)
    algorithm, hasher = new_hasher()
    hasher.update(payload)
    write_manifest(
        url,
        Manifest(
            file="a.ckpt", size=len(payload), checksum=hasher.hexdigest(), algorithm=algorithm, epoch=0, global_step=0
        ),
        s3.options,
    )
    with pytest.raises(CorruptCheckpointError) as failure:
        new_checkpointer(s3).restore(url)
    assert url in str(failure.value)
    assert str(staging) not in str(failure.value)
    assert os.listdir(staging) == []


def test_an_unusable_staging_folder_falls_back_to_reading_the_object(
    s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv(STAGING_DIR_ENV, str(not_a_folder))
    model = TinyNet()
    new_checkpointer(s3, model=model).save_checkpoint(s3.url("a.ckpt"))
    fresh = TinyNet()
    with caplog.at_level(logging.WARNING, logger="ckpthooks._io.staging"):
        new_checkpointer(s3, model=fresh).restore(s3.url("a.ckpt"))
    assert_state_equal(fresh.state_dict(), model.state_dict())
    assert any("cannot write to staging folder" in r.getMessage() for r in caplog.records)


def test_a_resume_from_last_downloads_the_checkpoint_once(s3: S3, staging: Path) -> None:
    """ckpt_path="last" chooses the newest checkpoint that verifies by loading it: the check and the
    load share one download (choosing it used to read it once more)."""
    model = torch.nn.Linear(128, 128)
    new_checkpointer(s3, model=model).save_checkpoint(s3.url("a.ckpt"))
    manifest = read_manifest(s3.url("a.ckpt"), s3.options)
    assert manifest is not None
    s3.proxy.reset()
    fresh = torch.nn.Linear(128, 128)
    report = new_checkpointer(s3, model=fresh).restore("last")
    assert report is not None and report.path == s3.url("a.ckpt")
    assert_state_equal(fresh.state_dict(), model.state_dict())
    assert downloaded(s3, "a.ckpt") == manifest.size


def test_a_resume_from_last_skips_a_corrupt_newest_remote_checkpoint(
    s3: S3, staging: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = torch.nn.Linear(16, 16)
    ckpt = new_checkpointer(s3, model=model)
    ckpt.save_checkpoint(s3.url("old.ckpt"))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt.progress.global_step = 5
    with torch.no_grad():
        model.weight.add_(1.0)
    ckpt.save_checkpoint(s3.url("new.ckpt"))
    target = paths.fs_path(s3.direct, s3.url("new.ckpt"))
    data = bytearray(s3.direct.cat_file(target))
    data[len(data) // 2] ^= 0xFF
    s3.direct.pipe_file(target, bytes(data))
    fresh = torch.nn.Linear(16, 16)
    with caplog.at_level(logging.WARNING):
        report = new_checkpointer(s3, model=fresh).restore("last")
    assert report is not None and report.path == s3.url("old.ckpt")
    assert_state_equal(fresh.state_dict(), expected)
    assert any("skipping" in r.getMessage() and "new.ckpt" in r.getMessage() for r in caplog.records)
    assert os.listdir(staging) == []


def test_a_copy_a_killed_load_left_is_removed_by_the_next_staging(s3: S3, staging: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = staging / f".ckpthooks-staged.ckpt.ckpthooks-tmp-{dead_pid}-deadbeef-0001"
    stale.write_bytes(b"x" * 1000)
    alive = staging / f".ckpthooks-staged.ckpt.ckpthooks-tmp-{os.getppid()}-cafecafe-0002"  # a live process
    alive.write_bytes(b"y")
    unrelated = staging / "someone-elses-file"
    unrelated.write_bytes(b"z")
    new_checkpointer(s3).save_checkpoint(s3.url("a.ckpt"))
    new_checkpointer(s3).restore(s3.url("a.ckpt"))
    assert sorted(os.listdir(staging)) == sorted([alive.name, unrelated.name])
