"""The commit index (ckpthooks/_commit_index.py): a per-folder cache of manifests that changes how fast
committed checkpoints are listed, never what is listed.

The reference everywhere is :func:`reference`: the listing as it was before the index, reading every
manifest file. Randomized sequences of commits, overwrites, removals and damage to the index compare
both after every step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import ckpthooks._catalog as catalog_module
import ckpthooks._manifest as manifest_module
from ckpthooks import Checkpointer, ModelCheckpoint
from ckpthooks import _commit_index as commit_index
from ckpthooks._catalog import (
    iter_committed,
    maintain_index,
    read_manifest,
    remove_manifest,
    write_manifest,
)
from ckpthooks._commit import clean_leftovers, drop_previous, keep_previous
from ckpthooks._commit_index import INDEX_NAME
from ckpthooks._io.durable import TEMP_MARKER
from ckpthooks._manifest import MANIFEST_SUFFIX, Manifest, manifest_path, previous_of
from ckpthooks._store import CheckpointStore
from ckpthooks.testing.storage_contract import fresh_memory_url
from tests.cli_helpers import run_cli, run_json, train


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Any:
    """Each test starts like a new process: nothing remembered about folders."""
    commit_index.forget_state()
    yield
    commit_index.forget_state()


@pytest.fixture
def indexed_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """An index from the first commit, compared with its folder whenever it doubles."""
    monkeypatch.setattr(commit_index, "MIN_CHECKPOINTS", 0)
    monkeypatch.setattr(commit_index, "CHECK_AFTER_BYTES", 0)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every manifest file the listing reads (through ``read_manifest``)."""
    seen: list[str] = []
    real = catalog_module.read_manifest

    def spy(checkpoint_path: str, storage_options: Any = None) -> Manifest | None:
        seen.append(checkpoint_path)
        return real(checkpoint_path, storage_options)

    monkeypatch.setattr(catalog_module, "read_manifest", spy)
    return seen


def reference(root: Path | str, recursive: bool = True) -> list[tuple[str, Manifest]]:
    """The listing without an index (``iter_committed`` before the index): every manifest read."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        return []
    found = []
    walker = os.walk(root) if recursive else [next(os.walk(root))]
    for folder, _dirs, files in walker:
        for name in sorted(files):
            if name.endswith(MANIFEST_SUFFIX) and (
                not name.startswith(".") or previous_of(name[: -len(MANIFEST_SUFFIX)])
            ):
                checkpoint = os.path.join(folder, name[: -len(MANIFEST_SUFFIX)])
                manifest = read_manifest(checkpoint)
                if manifest is not None:
                    found.append((checkpoint, manifest))
    return found


def listed(root: Path | str, recursive: bool = True) -> list[tuple[str, Manifest]]:
    return [(item.path, item.manifest) for item in iter_committed(str(root), recursive=recursive)]


def manifest_for(name: str, step: int, **changes: Any) -> Manifest:
    base = Manifest(
        file=name, size=10, checksum=f"{step:016x}", algorithm="xxh3_64", epoch=step // 10, global_step=step,
        metrics={"val_loss": 1.0 / (step + 1)}, writer="ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}#topk",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def commit(folder: Path, name: str, step: int, **changes: Any) -> str:
    path = folder / name
    path.write_bytes(b"0123456789")
    write_manifest(str(path), manifest_for(name, step, **changes))
    return str(path)


def index_lines(folder: Path) -> list[bytes]:
    index = folder / INDEX_NAME
    return index.read_bytes().splitlines() if index.exists() else []


def external_replace(path: str, manifest: Manifest) -> None:
    """A manifest written the way a version without the index writes it: temporary file, rename."""
    tmp = manifest_path(path) + ".external"
    Path(tmp).write_text(manifest.to_json())
    os.replace(tmp, manifest_path(path))


def identity(path: str) -> tuple[int, int, int, int]:
    return commit_index.identity_of(os.stat(manifest_path(path)))


def external_edit_in_place(path: str) -> None:
    """Change one character of a manifest in place, keeping its size and its modification time."""
    target = manifest_path(path)
    before = os.stat(target)
    text = Path(target).read_text()
    at = text.index('"checksum": "') + len('"checksum": "')
    changed = text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1 :]
    old = identity(path)
    with open(target, "r+") as handle:
        handle.write(changed)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    while identity(path) == old:  # a file system with coarse timestamps: change it a tick later
        time.sleep(0.01)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))


# ---------------------------------------------------------------------- writing


def test_a_folder_gets_an_index_once_it_holds_min_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit_index, "MIN_CHECKPOINTS", 5)
    for step in range(4):
        commit(tmp_path, f"c{step}.ckpt", step)
    assert not (tmp_path / INDEX_NAME).exists()  # small folders are listed quickly without one
    commit(tmp_path, "c4.ckpt", 4)
    assert len(index_lines(tmp_path)) == 5
    commit(tmp_path, "c5.ckpt", 5)
    assert len(index_lines(tmp_path)) == 6
    assert listed(tmp_path) == reference(tmp_path)


def test_the_default_threshold_keeps_small_folders_free_of_an_index(tmp_path: Path) -> None:
    train(tmp_path, [0.5, 0.2, 0.3])
    assert not any(path.name == INDEX_NAME for path in tmp_path.rglob("*"))


def test_a_listing_with_a_complete_index_reads_no_manifest(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    for step in range(20):
        commit(tmp_path, f"c{step}.ckpt", step)
    found = listed(tmp_path)
    assert reads == [] and len(found) == 20
    assert found == reference(tmp_path)


def test_each_line_holds_the_manifest_and_the_identity_of_its_file(tmp_path: Path, indexed_early: None) -> None:
    path = commit(tmp_path, "a.ckpt", 7, metrics={"val_loss": 0.25}, extra={"note": [1, "x"]})
    (line,) = index_lines(tmp_path)
    version, name, recorded, record = json.loads(line)
    assert (version, name) == (commit_index.INDEX_VERSION, "a.ckpt" + MANIFEST_SUFFIX)
    assert tuple(recorded) == identity(path)
    assert "a.ckpt" in record and {"val_loss": 0.25} in record and {"note": [1, "x"]} in record


def test_records_hold_a_manifest_exactly_as_its_file_parses(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    """A manifest written by hand (keys in another order, optional fields left out, an unknown one)
    is indexed as read_manifest parses it."""
    a = str(tmp_path / "a.ckpt")
    text = '{"format": "ckpthooks.manifest", "file": "a.ckpt", "size": 1, "checksum": null, "algorithm": null, '
    text += '"epoch": 0, "global_step": 3, "metrics": {"z": 1.5, "a": 2.0}, "created": 5.0, "unknown": 1}'
    Path(manifest_path(a)).write_text(text)
    commit(tmp_path, "b.ckpt", 1)  # the first commit of this process indexes the folder
    reads.clear()
    found = dict(listed(tmp_path))
    assert reads == [] and found[a] == read_manifest(a)
    assert list(found[a].metrics) == ["z", "a"]
    assert listed(tmp_path) == reference(tmp_path)


def test_a_manifest_rewritten_without_the_index_is_read_from_its_file(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    """``last.ckpt`` committed again by a version that does not keep the index: its line is stale."""
    for step in range(3):
        commit(tmp_path, f"c{step}.ckpt", step)
    last = commit(tmp_path, "last.ckpt", 2)
    external_replace(last, manifest_for("last.ckpt", 3, metrics={"val_loss": 0.01}))
    found = dict(listed(tmp_path))
    assert found[last].global_step == 3 and found[last].metrics == {"val_loss": 0.01}
    assert reads == [last]
    assert listed(tmp_path) == reference(tmp_path)


def test_a_manifest_edited_in_place_with_its_size_and_mtime_kept_is_read_from_its_file(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    path = commit(tmp_path, "a.ckpt", 1)
    external_edit_in_place(path)
    assert listed(tmp_path) == reference(tmp_path)
    assert read_manifest(path) is not None and dict(listed(tmp_path))[path].checksum.startswith("1")
    assert path in reads


def test_a_torn_last_line_is_ignored_and_the_next_commit_starts_a_new_line(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    commit(tmp_path, "a.ckpt", 1)
    whole = index_lines(tmp_path)[0]
    with open(tmp_path / INDEX_NAME, "ab") as handle:
        handle.write(whole[: len(whole) // 2])  # a crash in the middle of an append
    assert listed(tmp_path) == reference(tmp_path) and reads == []
    b = commit(tmp_path, "b.ckpt", 2)
    lines = index_lines(tmp_path)
    assert lines[1] == whole[: len(whole) // 2]  # the torn rest stays an unusable line of its own
    assert json.loads(lines[2])[1] == "b.ckpt" + MANIFEST_SUFFIX
    reads.clear()
    assert listed(tmp_path) == reference(tmp_path)
    assert b not in reads


@pytest.mark.parametrize(
    "damage",
    [b"", b"\x00" * 300, b"not json\n", b"[1,2,3]\n{}\n[]\n", b"\n\n\n", b"[1," * 100_000 + b"\n"],
    ids=["empty", "zeros", "garbage", "other-json", "blank", "deeply-nested"],
)
def test_a_damaged_index_changes_nothing(tmp_path: Path, indexed_early: None, damage: bytes) -> None:
    for step in range(4):
        commit(tmp_path, f"c{step}.ckpt", step)
    expected = reference(tmp_path)
    (tmp_path / INDEX_NAME).write_bytes(damage)
    assert listed(tmp_path) == expected
    commit_index.forget_state()  # a new process: its first commit repairs the index
    commit(tmp_path, "c4.ckpt", 4)
    assert listed(tmp_path) == reference(tmp_path)
    assert len([line for line in index_lines(tmp_path) if line.startswith(b"[1,")]) >= 5


def test_an_index_copied_from_another_folder_is_not_trusted(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    for step in range(5):
        commit(one, f"c{step}.ckpt", step)
        commit(two, f"c{step}.ckpt", 100 + step)  # the same names, other manifests
    shutil.copy(one / INDEX_NAME, two / INDEX_NAME)
    reads.clear()
    assert [m.global_step for _, m in listed(two)] == [100, 101, 102, 103, 104]
    assert len(reads) == 5  # no line matches a file of this folder
    assert listed(tmp_path) == reference(tmp_path)


def test_lines_of_removed_or_missing_manifests_are_ignored(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    paths = [commit(tmp_path, f"c{step}.ckpt", step) for step in range(5)]
    remove_manifest(paths[1])
    os.remove(manifest_path(paths[3]))  # removed by hand
    ghost = commit_index.Entry("ghost.ckpt" + MANIFEST_SUFFIX, (1, 2, 3, 4), json.loads(index_lines(tmp_path)[0])[3])
    with open(tmp_path / INDEX_NAME, "ab") as handle:
        handle.write(commit_index.encode(ghost))
    assert [p for p, _ in listed(tmp_path)] == [paths[0], paths[2], paths[4]]
    assert reads == [] and listed(tmp_path) == reference(tmp_path)


def test_a_line_naming_another_file_or_of_another_layout_is_not_used(
    tmp_path: Path, indexed_early: None, reads: list[str]
) -> None:
    a = commit(tmp_path, "a.ckpt", 1)
    b = commit(tmp_path, "b.ckpt", 2)
    lines = [json.loads(line) for line in index_lines(tmp_path)]
    lines[0][3][1] = "b.ckpt"  # the record of a.ckpt's manifest names b.ckpt
    lines[1][3][0] += 1  # a layout this version does not write
    (tmp_path / INDEX_NAME).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert listed(tmp_path) == reference(tmp_path)
    assert reads == [a, b]


def test_a_manifest_that_names_another_file_stays_uncommitted(tmp_path: Path, indexed_early: None) -> None:
    a = commit(tmp_path, "a.ckpt", 1)
    b = commit(tmp_path, "b.ckpt", 2)
    shutil.copy(manifest_path(a), manifest_path(b))  # says "file": "a.ckpt"
    assert [p for p, _ in listed(tmp_path)] == [a]
    assert listed(tmp_path) == reference(tmp_path)


def test_a_newer_manifest_version_raises_as_without_the_index(tmp_path: Path, indexed_early: None) -> None:
    from ckpthooks.exceptions import IncompatibleFormatError

    a = commit(tmp_path, "a.ckpt", 1)
    data = json.loads(Path(manifest_path(a)).read_text())
    data["manifest_version"] += 1
    Path(manifest_path(a)).write_text(json.dumps(data))
    with pytest.raises(IncompatibleFormatError):
        listed(tmp_path)
    commit_index.forget_state()
    commit(tmp_path, "b.ckpt", 2)  # the index is checked again: the newer manifest is left out of it
    with pytest.raises(IncompatibleFormatError):
        listed(tmp_path)


def test_kept_previous_versions_are_listed_like_without_the_index(tmp_path: Path, indexed_early: None) -> None:
    last = commit(tmp_path, "last.ckpt", 1)
    kept = keep_previous(last)
    assert kept is not None
    remove_manifest(last)
    assert listed(tmp_path) == reference(tmp_path) and [p for p, _ in listed(tmp_path)] == [kept]
    commit(tmp_path, "last.ckpt", 2)
    drop_previous(kept)
    assert listed(tmp_path) == reference(tmp_path) and [p for p, _ in listed(tmp_path)] == [last]


def test_the_index_is_compacted_while_top_k_prunes(tmp_path: Path, indexed_early: None) -> None:
    """Commit a new file, delete the oldest: the index stays proportional to the five files kept."""
    live = 5
    for step in range(300):
        commit(tmp_path, f"c{step}.ckpt", step)
        if step >= live:
            remove_manifest(str(tmp_path / f"c{step - live}.ckpt"))
        assert len(index_lines(tmp_path)) <= 4 * (live + 1)
    assert listed(tmp_path) == reference(tmp_path)


def test_the_index_stays_bounded_with_the_default_check_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit_index, "MIN_CHECKPOINTS", 0)
    for step in range(600):
        commit(tmp_path, f"c{step}.ckpt", step)
        if step >= 3:
            remove_manifest(str(tmp_path / f"c{step - 3}.ckpt"))
    assert (tmp_path / INDEX_NAME).stat().st_size <= 2 * commit_index.CHECK_AFTER_BYTES + 1024
    assert listed(tmp_path) == reference(tmp_path)


def test_a_new_process_repairs_an_index_that_lacks_most_manifests(tmp_path: Path, indexed_early: None) -> None:
    for step in range(10):
        commit(tmp_path, f"c{step}.ckpt", step)
    os.remove(tmp_path / INDEX_NAME)  # for example an older ckpthooks went on writing here
    for step in range(10, 12):
        commit(tmp_path, f"c{step}.ckpt", step)
    commit_index.forget_state()
    commit(tmp_path, "c12.ckpt", 12)
    assert len(index_lines(tmp_path)) == 13
    assert listed(tmp_path) == reference(tmp_path)


def test_a_failing_index_never_fails_a_commit(
    tmp_path: Path, indexed_early: None, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / INDEX_NAME).mkdir()  # cannot be opened as a file
    path = commit(tmp_path, "a.ckpt", 1)
    assert read_manifest(path) is not None
    commit(tmp_path, "b.ckpt", 2)
    warned = [r for r in caplog.records if "could not update the commit index" in r.getMessage()]
    assert [r.levelname for r in warned if r.levelname == "WARNING"] == ["WARNING"]  # once per folder
    assert listed(tmp_path) == reference(tmp_path)


def test_commits_from_several_threads(tmp_path: Path, indexed_early: None) -> None:
    def work(first: int) -> None:
        for step in range(first, first + 15):
            commit(tmp_path, f"c{step}.ckpt", step)

    threads = [threading.Thread(target=work, args=(first,)) for first in (0, 100, 200, 300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(listed(tmp_path)) == 60
    assert listed(tmp_path) == reference(tmp_path)


def test_remote_folders_get_no_index_and_ignore_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import fsspec

    monkeypatch.setattr(commit_index, "MIN_CHECKPOINTS", 0)
    store = CheckpointStore()
    with fresh_memory_url() as url:
        for step in range(3):
            store.save({"w": torch.zeros(2)}, f"{url}/c{step}.ckpt", epoch=0, global_step=step)
        fs = fsspec.filesystem("memory")
        assert not fs.exists(f"{url}/{INDEX_NAME}")
        fs.pipe_file(f"{url}/{INDEX_NAME}", b"garbage\n")
        assert [item.manifest.global_step for item in iter_committed(url)] == [0, 1, 2]


# ---------------------------------------------------------------------- the rest of the library


def test_last_and_best_are_the_same_with_and_without_the_index(tmp_path: Path, indexed_early: None) -> None:
    losses = [0.5, 0.2, 0.4, 0.3, 0.6, 0.1, 0.7]
    train(tmp_path, losses)
    folder = tmp_path / "checkpoints"
    assert (folder / INDEX_NAME).exists()

    def answers() -> tuple[str | None, str | None]:
        ckpt = Checkpointer(tmp_path, callbacks=[ModelCheckpoint(monitor="val_loss")])
        return ckpt.find_checkpoint("last"), ckpt.find_checkpoint("best")

    with_index = answers()
    assert with_index[1] is not None and with_index[1].endswith("epoch=5-step=12.ckpt")
    os.remove(folder / INDEX_NAME)
    assert answers() == with_index


def test_leftovers_keep_the_index_and_remove_a_crashed_compaction(tmp_path: Path, indexed_early: None) -> None:
    commit(tmp_path, "a.ckpt", 1)
    crashed = tmp_path / f".{INDEX_NAME}{TEMP_MARKER}999999999-deadbeef-0"
    crashed.write_bytes(b"[1,")
    removed = clean_leftovers([str(tmp_path)])
    assert removed == [str(crashed)]
    assert (tmp_path / INDEX_NAME).exists()


def test_cli_copy_never_copies_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commit_index, "MIN_CHECKPOINTS", 0)
    train(tmp_path / "run", [0.5, 0.2, 0.3])
    source = tmp_path / "run" / "checkpoints"
    report = run_json("copy", str(source), str(tmp_path / "copy"))
    assert all(r["ok"] for r in report["results"])
    copied = tmp_path / "copy"
    # the copy's own commits wrote its index: lines with the copy's identities, none of the source's
    assert index_lines(copied) and not set(index_lines(copied)) & set(index_lines(source))
    assert listed(copied) == reference(copied)
    assert run_cli("ls", str(copied)).exit_code == 0 and run_cli("verify", str(copied)).exit_code == 0


def test_cli_commands_on_a_folder_with_an_index(tmp_path: Path, indexed_early: None) -> None:
    train(tmp_path, [0.5, 0.2, 0.4, 0.3, 0.6])
    folder = tmp_path / "checkpoints"
    before = len(index_lines(folder))
    listing = run_json("ls", str(tmp_path))
    assert sorted(r["path"] for r in listing["checkpoints"]) == sorted(p for p, _ in reference(tmp_path))
    assert run_cli("verify", str(tmp_path)).exit_code == 0
    report = run_json("prune", str(tmp_path), "--keep-top-k", "1", "--monitor", "val_loss", "--yes")
    assert len(report["deleted"]) == 3 and report["errors"] == []
    assert listed(tmp_path) == reference(tmp_path)
    # prune compacted the index: one line per remaining manifest
    assert len(index_lines(folder)) == len(reference(folder)) < before


# ---------------------------------------------------------------------- randomized against the reference

NAMES = [f"c{i}.ckpt" for i in range(10)] + ["last.ckpt"]


class World:
    """Two folders (one nested) and a third one to copy indexes from; every operation a commit, a
    removal, a write by something that does not keep the index, or damage to the index."""

    def __init__(self, base: Path, rng: random.Random) -> None:
        self.rng = rng
        self.root = base / "run"
        self.sub = self.root / "sub"
        self.other = base / "other"
        for folder in (self.root, self.sub, self.other):
            folder.mkdir(parents=True)
        self.step = 0
        self.kept: dict[Path, str] = {}
        self.done: list[str] = []

    def folder(self) -> Path:
        return self.rng.choice((self.root, self.root, self.sub, self.other))

    def existing(self, folder: Path) -> list[str]:
        return sorted(str(folder / n[: -len(MANIFEST_SUFFIX)]) for n in os.listdir(folder)
                      if n.endswith(MANIFEST_SUFFIX) and not n.startswith("."))  # fmt: skip

    def do(self) -> None:
        op = self.rng.choice([
            "commit", "commit", "commit", "commit", "remove", "remove", "external_replace", "external_edit",
            "external_remove", "torn_line", "truncate", "delete_index", "foreign_index", "ghost_line", "garbage_line",
            "stale_line", "other_file", "new_process", "maintain", "keep_previous", "drop_previous",
        ])  # fmt: skip
        folder = self.folder()
        getattr(self, op)(folder)
        self.done.append(f"{op} {folder.name}")

    def commit(self, folder: Path) -> None:
        self.step += 1
        commit(folder, self.rng.choice(NAMES), self.step, metrics={"val_loss": self.rng.random()})

    def remove(self, folder: Path) -> None:
        if paths := self.existing(folder):
            remove_manifest(self.rng.choice(paths))

    def external_replace(self, folder: Path) -> None:
        if paths := self.existing(folder):
            path = self.rng.choice(paths)
            self.step += 1
            external_replace(path, manifest_for(Path(path).name, self.step, metrics={"val_loss": self.rng.random()}))

    def external_edit(self, folder: Path) -> None:
        if paths := self.existing(folder):
            external_edit_in_place(self.rng.choice(paths))

    def external_remove(self, folder: Path) -> None:
        if paths := self.existing(folder):
            os.remove(manifest_path(self.rng.choice(paths)))

    def _append(self, folder: Path, data: bytes) -> None:
        if (folder / INDEX_NAME).exists():
            with open(folder / INDEX_NAME, "ab") as handle:
                handle.write(data)

    def torn_line(self, folder: Path) -> None:
        if lines := index_lines(folder):
            line = self.rng.choice(lines)
            self._append(folder, line[: self.rng.randrange(len(line))])

    def truncate(self, folder: Path) -> None:
        index = folder / INDEX_NAME
        if index.exists():
            os.truncate(index, self.rng.randrange(index.stat().st_size + 1))

    def delete_index(self, folder: Path) -> None:
        (folder / INDEX_NAME).unlink(missing_ok=True)

    def foreign_index(self, folder: Path) -> None:
        source = self.rng.choice([f for f in (self.root, self.sub, self.other) if f != folder])
        if (source / INDEX_NAME).exists():
            shutil.copy(source / INDEX_NAME, folder / INDEX_NAME)

    def ghost_line(self, folder: Path) -> None:
        if lines := [line for line in index_lines(folder) if commit_index._entry(commit_index._loads(line))]:
            line = json.loads(self.rng.choice(lines))
            line[1] = f"ghost{self.rng.randrange(3)}.ckpt{MANIFEST_SUFFIX}"
            self._append(folder, (json.dumps(line) + "\n").encode())

    def stale_line(self, folder: Path) -> None:
        """A line for an existing manifest with other contents and a near miss of its identity."""
        if not (paths := self.existing(folder)) or not index_lines(folder):
            return
        path = self.rng.choice(paths)
        ino, size, mtime, ctime = identity(path)
        near = self.rng.choice([(ino + 1, size, mtime, ctime), (ino, size + 1, mtime, ctime),
                                (ino, size, mtime - 1, ctime), (ino, size, mtime, ctime + 1)])  # fmt: skip
        record = manifest_module._record_of(manifest_for(Path(path).name, 10**6))
        self._append(folder, commit_index.encode(commit_index.Entry(Path(manifest_path(path)).name, near, record)))

    def garbage_line(self, folder: Path) -> None:
        self._append(folder, self.rng.choice([b"\x00\x00\x00\n", b"{}\n", b"[1]\n", b'[1,"x",[1,2],[]]\n']))

    def other_file(self, folder: Path) -> None:
        paths = self.existing(folder)
        if len(paths) >= 2:
            a, b = self.rng.sample(paths, 2)
            shutil.copy(manifest_path(a), manifest_path(b))

    def new_process(self, folder: Path) -> None:
        commit_index.forget_state()

    def maintain(self, folder: Path) -> None:
        maintain_index(str(folder))

    def keep_previous(self, folder: Path) -> None:
        last = folder / "last.ckpt"
        if folder not in self.kept and read_manifest(str(last)) is not None:
            kept = keep_previous(str(last))
            if kept is not None:
                self.kept[folder] = kept

    def drop_previous(self, folder: Path) -> None:
        drop_previous(self.kept.pop(folder, None))

    def check(self) -> None:
        for root in (self.root, self.sub, self.other):
            for recursive in (True, False):
                assert listed(root, recursive) == reference(root, recursive), "\n".join(self.done[-15:])


@pytest.mark.parametrize("seed", range(8))
def test_randomized_sequences_list_what_the_manifests_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: list[str], seed: int
) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(commit_index, "MIN_CHECKPOINTS", rng.choice([0, 2, 6]))
    monkeypatch.setattr(commit_index, "CHECK_AFTER_BYTES", rng.choice([0, 3000]))
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what this test is about
    world = World(tmp_path, rng)
    listed_in_total = from_index = 0
    for _ in range(250):
        world.do()
        reads.clear()
        found = [path for path, _ in listed(world.root)]
        listed_in_total += len(found)
        from_index += len(set(found) - set(reads))
        world.check()
    assert from_index > listed_in_total // 10  # the comparison is not a vacuous one
    # after a commit into every folder by a new process, at most a quarter of what is listed is read
    monkeypatch.setattr(commit_index, "MIN_CHECKPOINTS", 0)
    for folder in (world.root, world.sub, world.other):
        commit_index.forget_state()
        world.commit(folder)
    reads.clear()
    found = [path for path, _ in listed(world.root)]
    assert 4 * len(set(reads) & set(found)) <= len(found)
    world.check()
