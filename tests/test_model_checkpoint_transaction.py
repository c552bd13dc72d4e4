"""ModelCheckpoint's save transaction: a failed save undoes its bookkeeping changes exactly, at a
cost proportional to those changes (not to the files kept), and a save builds the policy's state
once."""

from __future__ import annotations

from collections.abc import Iterator, KeysView
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Checkpointer, ModelCheckpoint
from ckpthooks._manifest import Manifest
from ckpthooks._policies.topk import TopK
from ckpthooks.exceptions import DistributedCheckpointError, StorageError
from tests.helpers import TinyNet


class ScanCountingDict(dict[str, float]):
    """A dict that counts the ways of going over all its entries (a copy goes through one)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.scans = 0

    def __iter__(self) -> Iterator[str]:
        self.scans += 1
        return super().__iter__()

    def keys(self) -> KeysView[str]:  # type: ignore[override]
        self.scans += 1
        return super().keys()

    def items(self) -> Any:
        self.scans += 1
        return super().items()

    def values(self) -> Any:
        self.scans += 1
        return super().values()

    def copy(self) -> dict[str, float]:
        self.scans += 1
        return dict(super().items())


def checkpointer(root: Path, policy: ModelCheckpoint, **kwargs: Any) -> Checkpointer:
    ckpt = Checkpointer(default_root_dir=root, callbacks=[policy], preemption_signals=None, **kwargs)
    ckpt.track(model=TinyNet())
    return ckpt


def save_at(ckpt: Checkpointer, policy: ModelCheckpoint, step: int, loss: float) -> None:
    ckpt.progress.global_step = step
    ckpt.log("loss", loss)
    policy.save_due(ckpt)


def ordered_state(policy: ModelCheckpoint) -> dict[str, Any]:
    """The policy's bookkeeping, with the order of ``best_k_models`` (it decides ties)."""
    state = policy.state_dict()
    state["best_k_models"] = list(state["best_k_models"].items())
    for key in ("current_score", "last_global_step_saved"):  # a save decision sets them, failed or not
        del state[key]
    return state


# ------------------------------------------------------------------ cost of a save


def test_a_policy_save_neither_copies_nor_scans_the_kept_files(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=-1, save_last=True)
    ckpt = checkpointer(tmp_path, policy)
    history = ScanCountingDict({str(tmp_path / f"old-{i}.ckpt"): 1.0 + i for i in range(1_000)})
    policy.topk.scores = history
    logged: list[tuple[str, list[tuple[Any, ...]]]] = []

    def write(filepath: str, weights_only: bool = False, **kwargs: Any) -> None:
        logged.append((Path(filepath).name, [tuple(c) for c in getattr(policy.topk, "journal", None) or []]))

    ckpt.save_checkpoint = write  # type: ignore[method-assign,assignment]
    for step in (1, 2, 3):
        save_at(ckpt, policy, step, 0.5 / step)
    assert history.scans == 0, "a save must not copy or go over the kept entries"
    assert len(history) == 1_003
    # the undo log holds the changes of the save in progress only: one entry for the top-k file,
    # none for last.ckpt, however many entries there are
    assert logged == [
        ("step=1.ckpt", [(str(tmp_path / "step=1.ckpt"), None, -1)]),
        ("last.ckpt", []),
        ("step=2.ckpt", [(str(tmp_path / "step=2.ckpt"), None, -1)]),
        ("last.ckpt", []),
        ("step=3.ckpt", [(str(tmp_path / "step=3.ckpt"), None, -1)]),
        ("last.ckpt", []),
    ]
    assert policy.topk.journal is None  # nothing recorded outside a save


def test_a_save_builds_the_policy_state_once(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=-1)
    ckpt = checkpointer(tmp_path, policy)
    built = 0
    build = policy.state_dict

    def counting_state_dict() -> dict[str, Any]:
        nonlocal built
        built += 1
        return build()

    policy.state_dict = counting_state_dict  # type: ignore[method-assign]
    save_at(ckpt, policy, 1, 0.5)
    assert built == 1
    saved = torch.load(tmp_path / "step=1.ckpt", weights_only=True)["callbacks"][policy.state_key]
    assert saved["best_k_models"] == {"step=1.ckpt": 0.5}
    assert saved["best_model_path"] == saved["kth_best_model_path"] == "step=1.ckpt"


def test_a_policy_subclass_without_state_saves_none(tmp_path: Path) -> None:
    class Stateless(ModelCheckpoint):
        def state_dict(self) -> dict[str, Any]:
            return {}

    policy = Stateless(dirpath=tmp_path, filename="{step}", monitor="loss")
    assert not policy.has_state()
    assert ModelCheckpoint(dirpath=tmp_path).has_state()
    ckpt = checkpointer(tmp_path, policy)
    save_at(ckpt, policy, 1, 0.5)
    assert policy.state_key not in torch.load(tmp_path / "step=1.ckpt", weights_only=True).get("callbacks", {})


def test_state_dict_keeps_lightning_keys_and_values(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="loss", mode="max", save_top_k=-1)
    for name, score in (("a", 1.0), ("b", 3.0), ("c", 3.0), ("d", 0.5), ("e", 0.5)):
        policy.topk.add(str(tmp_path / f"{name}.ckpt"), score)
    policy.last_model_path = str(tmp_path / "last.ckpt")
    state = policy.state_dict()
    assert list(state["best_k_models"].items()) == [
        ("a.ckpt", 1.0),
        ("b.ckpt", 3.0),
        ("c.ckpt", 3.0),
        ("d.ckpt", 0.5),
        ("e.ckpt", 0.5),
    ]
    # equal scores: the earliest entry is the best one, and the earliest worst one the k-th
    assert (state["best_model_path"], state["best_model_score"]) == ("b.ckpt", 3.0)
    assert (state["kth_best_model_path"], state["kth_value"]) == ("d.ckpt", 0.5)
    assert state["best_model_path"] == policy._relative(policy.best_model_path)
    assert state["last_model_path"] == "last.ckpt"
    assert state["latest_model_path"] == ""
    assert ModelCheckpoint(monitor="loss").state_dict()["best_k_models"] == {}


# ------------------------------------------------------------------ rollback


def test_a_failure_after_the_commit_restores_the_exact_bookkeeping(tmp_path: Path) -> None:
    """On another rank's failure the saving rank has committed and pruned already; the policy's
    bookkeeping still goes back to what it was, order of equal scores included."""
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=2, save_last=True)
    ckpt = checkpointer(tmp_path, policy, on_save_error="log")
    save_at(ckpt, policy, 1, 2.0)
    save_at(ckpt, policy, 2, 2.0)  # a tie: step=1 stays the k-th, the first to go
    before = ordered_state(policy)
    assert before["kth_best_model_path"] == "step=1.ckpt"
    real_save = ckpt.save_checkpoint
    failed: list[str] = []

    def save_then_fail(filepath: str, weights_only: bool = False, **kwargs: Any) -> Manifest | None:
        real_save(filepath, weights_only, **kwargs)  # commits, then prunes the displaced file
        failed.append(Path(filepath).name)
        raise DistributedCheckpointError(f"rank 1 failed saving {filepath}")

    ckpt.save_checkpoint = save_then_fail  # type: ignore[method-assign,assignment]
    save_at(ckpt, policy, 3, 1.0)  # displaces step=1, then fails; so does last.ckpt
    assert failed == ["step=3.ckpt", "last.ckpt"]
    assert ordered_state(policy) == before
    assert getattr(policy.topk, "journal", None) is None

    ckpt.save_checkpoint = real_save  # type: ignore[method-assign]
    save_at(ckpt, policy, 4, 1.5)  # the order came back: step=1 (the earlier of the tie) goes
    assert {Path(p).name: s for p, s in policy.best_k_models.items()} == {"step=2.ckpt": 2.0, "step=4.ckpt": 1.5}


def test_rollback_in_the_middle_of_a_transaction_restores_every_change(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="loss", save_top_k=3, save_last=True)
    ckpt = checkpointer(tmp_path, policy, on_save_error="log")

    def path(name: str) -> str:
        return str(tmp_path / f"{name}.ckpt")

    for name, score in (("a", 1.0), ("b", 2.0), ("c", 2.0)):
        policy.topk.add(path(name), score)
    policy._pending_removals.update({path("old"), path("older")})
    policy.last_model_path = path("last")
    policy._latest_path = path("c")
    before = ordered_state(policy)
    pending_before = set(policy._pending_removals)
    reached: list[str] = []

    def write() -> str | None:
        policy.topk.discard(path("b"))  # the k-th of the tie
        policy.topk.add(path("new"), 0.5)
        policy.topk.add(path("a"), 0.7)  # a changed score keeps its place
        policy.topk.discard(path("c"))
        policy.topk.add(path("c"), 0.1)  # back, but now last in the order
        policy.topk.discard(path("missing"))  # no change, nothing to undo
        policy._add_pending(path("b"))
        policy._discard_pending(path("old"))
        policy._add_pending(path("older"))  # already pending: no change
        policy.last_model_path = path("last-v1")
        policy._latest_path = path("new")
        reached.append("changed")
        assert policy.topk.journal is not None and len(policy.topk.journal) == 5
        raise StorageError("injected failure in the middle of the save")

    assert policy._transaction(ckpt, write) is None  # on_save_error="log": logged, not raised
    assert reached == ["changed"]
    assert ordered_state(policy) == before
    assert policy._pending_removals == pending_before
    assert list(policy.topk.scores) == [path("a"), path("b"), path("c")]
    assert policy.kth_best_model_path == path("b")
    assert (policy.best_model_path, policy.last_model_path) == (path("a"), path("last"))
    assert policy.topk.journal is None


def test_a_transaction_inside_another_is_undone_with_it(tmp_path: Path) -> None:
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="loss", save_top_k=-1)
    ckpt = checkpointer(tmp_path, policy)
    policy.topk.add(str(tmp_path / "a.ckpt"), 1.0)

    def inner() -> str | None:
        policy.topk.add(str(tmp_path / "inner.ckpt"), 0.5)
        return "inner"

    def outer() -> str | None:
        policy.topk.discard(str(tmp_path / "a.ckpt"))
        assert policy._transaction(ckpt, inner) == "inner"
        policy._add_pending(str(tmp_path / "a.ckpt"))
        raise OSError("injected")

    with pytest.raises(OSError, match="injected"):
        policy._transaction(ckpt, outer)
    assert policy.topk.scores == {str(tmp_path / "a.ckpt"): 1.0}
    assert policy._pending_removals == set()
    assert policy.topk.journal is None


# ------------------------------------------------------------------ TopK's undo log


def test_topk_rollback_restores_values_and_order() -> None:
    topk = TopK(k=3, mode="min", scores={"a": 1.0, "b": 2.0, "c": 2.0})
    mark = topk.savepoint()
    assert mark == 0
    topk.discard(topk.displaced() or "")
    topk.add("d", 0.5)
    topk.add("a", 3.0)
    topk.discard("c")
    topk.add("c", 0.1)
    assert topk.journal is not None and len(topk.journal) == 5
    topk.rollback(mark)
    assert list(topk.scores.items()) == [("a", 1.0), ("b", 2.0), ("c", 2.0)]
    assert topk.kth_path == "b"
    topk.release()
    assert topk.journal is None
    topk.add("e", 9.0)  # not recorded
    assert topk.journal is None


def test_topk_savepoints_nest() -> None:
    topk = TopK(k=-1, scores={"a": 1.0, "b": 2.0})
    outer = topk.savepoint()
    topk.discard("a")
    inner = topk.savepoint()
    topk.add("x", 0.0)
    topk.rollback(inner)
    topk.release()
    assert topk.scores == {"b": 2.0}
    assert topk.journal is not None  # the outer savepoint still records
    topk.add("y", 5.0)
    topk.rollback(outer)
    topk.release()
    assert list(topk.scores.items()) == [("a", 1.0), ("b", 2.0)]
    with pytest.raises(RuntimeError):
        topk.release()
    with pytest.raises(RuntimeError):
        topk.rollback(0)
