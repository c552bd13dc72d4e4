"""ModelCheckpoint: Lightning's options with Lightning's meaning, and its known faults fixed.

The scenarios follow Lightning's own ModelCheckpoint tests, driven through a plain loop; a test
ported from one names it (Lightning-AI/pytorch-lightning, tests/tests_pytorch/checkpointing/
test_model_checkpoint.py). The others test ckpthooks' own guarantees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import (
    Checkpointer,
    CheckpointNotFoundError,
    ConfigurationError,
    KeepMilestones,
    MissingStateError,
    ModelCheckpoint,
)
from ckpthooks._catalog import read_manifest
from ckpthooks._policies.naming import format_filename
from tests.helpers import TinyNet

Metrics = Callable[[int, int], dict[str, float]]


def make_checkpointer(root: Path, callbacks: Sequence[Any], **kwargs: Any) -> tuple[Checkpointer, TinyNet]:
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = Checkpointer(default_root_dir=root, callbacks=list(callbacks), **kwargs)
    ckpt.track(model=model, optimizers=optimizer)
    return ckpt, model


def drive(
    ckpt: Checkpointer,
    epochs: int,
    batches: int,
    epoch_metrics: Callable[[int], dict[str, float]] | None = None,
    step_metrics: Metrics | None = None,
    start: int = 0,
) -> None:
    """A loop that logs given metrics: per step (after the step) and per epoch (before its end)."""
    ckpt.fit_start()
    for epoch in range(start, epochs):
        ckpt.epoch_start(epoch)
        for batch in range(batches):
            if step_metrics is not None:
                ckpt.log_dict(step_metrics(epoch, batch))
            ckpt.step_end()
        if epoch_metrics is not None:
            ckpt.log_dict(epoch_metrics(epoch))
        ckpt.epoch_end()
    ckpt.fit_end()


def ckpt_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".ckpt"}


def loaded(path: str | Path) -> dict[str, Any]:
    result: dict[str, Any] = torch.load(path, weights_only=True)
    return result


# ------------------------------------------------------------------ naming


def test_format_checkpoint_name_follows_lightning() -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_format_checkpoint_name."""
    assert format_filename("", {"epoch": 3, "step": 2}) == "epoch=3-step=2"
    assert format_filename(None, {"epoch": 3, "step": 2}, prefix="test") == "test-epoch=3-step=2"
    assert format_filename("ckpt", {}, prefix="test") == "test-ckpt"
    assert format_filename("{epoch:03d}-{acc}", {"epoch": 3, "acc": 0.03}) == "epoch=003-acc=0.03"
    assert format_filename("{epoch},{acc:.5f}", {"epoch": 3, "acc": 0.03}) == "epoch=3,acc=0.03000"
    assert (
        format_filename(
            "epoch={epoch:03d}-val_acc={val/acc}", {"epoch": 3, "val/acc": 0.03}, auto_insert_metric_name=False
        )
        == "epoch=003-val_acc=0.03"
    )
    assert (
        format_filename("mAP@0.50={val/mAP@0.50:.4f}", {"val/mAP@0.50": 0.2}, auto_insert_metric_name=False)
        == "mAP@0.50=0.2000"
    )


def test_format_checkpoint_name_without_folder_and_with_version(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_format_checkpoint_name
    (no dirpath set; with version)."""
    assert ModelCheckpoint(monitor="x").format_checkpoint_name({"epoch": 3, "step": 2}) == "epoch=3-step=2.ckpt"
    mc = ModelCheckpoint(monitor="x", dirpath=tmp_path, filename="name")
    assert mc.format_checkpoint_name({}, ver=3) == str(tmp_path / "name-v3.ckpt")


def test_metric_names_with_path_separators_never_create_folders(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_format_checkpoint_name
    (using slashes; a deliberate difference)."""
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}_{val/loss:.5f}", monitor="val/loss", save_top_k=-1)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 2, 1, epoch_metrics=lambda e: {"val/loss": 0.03 + e})
    assert ckpt_files(tmp_path) == {"epoch=0_val_loss=0.03000.ckpt", "epoch=1_val_loss=1.03000.ckpt"}
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    assert format_filename("{a\\b}", {"a\\b": 1.0}) == "a_b=1.0"


def test_template_naming_an_unlogged_metric_raises_instead_of_writing_zero(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{val_acc:.2f}")
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    with pytest.raises(ConfigurationError, match="val_acc"):
        drive(ckpt, 1, 1)
    assert ckpt_files(tmp_path) == set()


def test_filename_extension_is_not_doubled(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="model.ckpt")
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 1, 1)
    assert ckpt_files(tmp_path) == {"model.ckpt"}


# ------------------------------------------------------------------ option validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"save_top_k": -3}, "save_top_k"),
        ({"save_top_k": 3}, "needs a monitor"),
        ({"every_n_epochs": -3}, "every_n_epochs"),
        ({"every_n_train_steps": -3}, "every_n_train_steps"),
        ({"every_n_train_steps": 1, "every_n_epochs": 2}, "mutually exclusive"),
        ({"train_time_interval": timedelta(minutes=1), "every_n_epochs": 2}, "mutually exclusive"),
        ({"train_time_interval": timedelta(minutes=1), "every_n_train_steps": 2}, "mutually exclusive"),
        ({"mode": "unknown_option"}, "mode"),
        ({"save_last": "yes"}, "save_last"),
    ],
)
def test_invalid_options_raise(kwargs: dict[str, Any], match: str) -> None:
    """From checkpointing/test_model_checkpoint.py::test_invalid_top_k, test_none_monitor_top_k,
    test_invalid_every_n_epochs, test_invalid_every_n_train_steps, test_invalid_trigger_combination
    and test_model_checkpoint_mode_options (ckpthooks' messages differ)."""
    with pytest.raises(ConfigurationError, match=match):
        ModelCheckpoint(**kwargs)


def test_valid_option_combinations_and_defaults() -> None:
    """From checkpointing/test_model_checkpoint.py::test_none_monitor_top_k and
    test_invalid_trigger_combination (the valid combinations), test_none_every_n_train_steps_val_epochs."""
    for top_k in (-1, 0, 1):
        ModelCheckpoint(save_top_k=top_k)
    ModelCheckpoint(every_n_train_steps=0, every_n_epochs=3)
    ModelCheckpoint(every_n_train_steps=4, every_n_epochs=0)
    ModelCheckpoint(every_n_train_steps=0, every_n_epochs=0, train_time_interval=timedelta(minutes=1))
    default = ModelCheckpoint()
    assert default.every_n_epochs == 1 and default.every_n_train_steps == 0
    assert ModelCheckpoint(every_n_train_steps=5).every_n_epochs == 0


def test_enable_checkpointing_false_with_a_model_checkpoint_raises(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_configure_model_checkpoint."""
    with pytest.raises(ConfigurationError, match="enable_checkpointing=False"):
        Checkpointer(tmp_path, callbacks=[ModelCheckpoint()], enable_checkpointing=False)


# ------------------------------------------------------------------ when


def test_score_and_checkpoint_contents(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_score_and_ckpt."""
    scores = [0.7, 0.2, 0.5]
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{val_log:.4f}-{epoch}", monitor="val_log", save_top_k=-1)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 5, epoch_metrics=lambda e: {"val_log": scores[e]})
    assert ckpt_files(tmp_path) == {f"val_log={s:.4f}-epoch={e}.ckpt" for e, s in enumerate(scores)}
    for epoch, score in enumerate(scores):
        data = loaded(tmp_path / f"val_log={score:.4f}-epoch={epoch}.ckpt")
        assert data["epoch"] == epoch
        assert data["global_step"] == 5 * (epoch + 1)
        state = data["callbacks"][mc.state_key]
        assert state["monitor"] == "val_log"
        assert state["current_score"] == pytest.approx(score)
    assert mc.best_model_score == pytest.approx(0.2)
    assert mc.best_model_path == str(tmp_path / "val_log=0.2000-epoch=1.ckpt")


@pytest.mark.parametrize("every_n_epochs", [0, 1, 2, 3])
def test_every_n_epochs(tmp_path: Path, every_n_epochs: int) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_every_n_epochs."""
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=every_n_epochs)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 5, 1)
    expected = {f"epoch={e}.ckpt" for e in range(5) if every_n_epochs and (e + 1) % every_n_epochs == 0}
    assert ckpt_files(tmp_path) == expected


def test_every_n_train_steps(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_ckpt_every_n_train_steps."""
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=16, save_top_k=-1)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 2, 64)
    assert ckpt_files(tmp_path) == {f"step={s}.ckpt" for s in range(16, 129, 16)}


def test_train_time_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_train_time_interval."""
    clock = iter(7.0 * i for i in range(10_000))
    monkeypatch.setattr("ckpthooks._policies.schedule.time.monotonic", lambda: next(clock))
    mc = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}-{step}", train_time_interval=timedelta(minutes=1), save_top_k=-1
    )
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 2, 64)
    # 7 s per batch, one save per elapsed minute: 128 batches take 896 s
    assert len(ckpt_files(tmp_path)) == 14


def test_several_validations_per_epoch_each_save(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_val_check_interval_checkpoint_files."""
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max", save_top_k=-1)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    ckpt.fit_start()
    ckpt.epoch_start(0)
    for step in range(1, 11):
        ckpt.step_end()
        if step % 2 == 0:
            ckpt.log("val_acc", step)
            ckpt.validation_end()
    ckpt.epoch_end()
    assert ckpt_files(tmp_path) == {f"epoch=0-step={s}.ckpt" for s in (2, 4, 6, 8, 10)}


def test_save_on_train_epoch_end_saves_before_validation(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_on_train_epoch_end=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    seen: list[str] = []
    original = ckpt.save_checkpoint

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append("saved")
        return original(*args, **kwargs)

    ckpt.save_checkpoint = spy  # type: ignore[method-assign]
    ckpt.fit_start()
    ckpt.epoch_start(0)
    ckpt.step_end()
    ckpt.progress.epoch_finished = True
    ckpt._call("on_train_epoch_end")
    assert seen == ["saved"]
    ckpt.validation_end()
    assert seen == ["saved"]  # not a second time for the same step


# ------------------------------------------------------------------ what to keep


def test_default_policy_keeps_only_the_newest_epoch(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_default_checkpoint_behavior."""
    ckpt, _ = make_checkpointer(tmp_path, [])
    drive(ckpt, 3, 5)
    assert ckpt_files(tmp_path / "checkpoints") == {"epoch=2-step=15.ckpt"}


def test_top_k_zero_saves_only_last(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_topk_zero."""
    mc = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 2, 2)
    assert mc.best_model_path == "" and mc.best_model_score is None
    assert mc.best_k_models == {} and mc.kth_best_model_path == ""
    assert ckpt_files(tmp_path) == {"last.ckpt"}
    assert mc.last_model_path == str(tmp_path / "last.ckpt")


def test_top_k_all_with_monitor(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_topk_all."""
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="epoch", mode="max", save_top_k=-1)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 1)
    assert mc.best_model_path == str(tmp_path / "epoch=2.ckpt")
    assert mc.best_model_score == 2
    assert set(mc.best_k_models) == {str(tmp_path / f"epoch={i}.ckpt") for i in range(3)}
    assert mc.kth_best_model_path == str(tmp_path / "epoch=0.ckpt")
    assert len(ckpt_files(tmp_path)) == 3


@pytest.mark.parametrize(
    "mode, scores, best", [("min", [3, 1, 2, 0.5, 4], [0.5, 1]), ("max", [3, 1, 2, 5, 4], [5, 4])]
)
def test_top_k_keeps_the_k_best_files_only(
    tmp_path: Path, mode: str, scores: list[float], best: list[float]
) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}-{loss}", monitor="loss", mode=mode, save_top_k=2)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, len(scores), 1, epoch_metrics=lambda e: {"loss": scores[e]})
    assert sorted(mc.best_k_models.values(), reverse=(mode == "max")) == best
    assert ckpt_files(tmp_path) == {Path(p).name for p in mc.best_k_models}
    assert mc.best_model_score == best[0]
    assert mc.kth_value == best[1]


def test_ties_do_not_displace_the_earlier_checkpoint(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=2)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 4, 1, epoch_metrics=lambda e: {"loss": [1.0, 2.0, 2.0, 1.0][e]})
    # epoch 2 ties with the kth (epoch 1) and is not kept; epoch 3 beats the kth and replaces it
    assert ckpt_files(tmp_path) == {"epoch=0.ckpt", "epoch=3.ckpt"}


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_never_ranked(
    tmp_path: Path, mode: str, bad: float, caplog: pytest.LogCaptureFixture
) -> None:
    """From checkpointing/test_model_checkpoint.py::test_checkpointing_with_nan_as_first and
    test_current_score_when_nan (a deliberate difference)."""
    values = [bad, *([5, 7, 8] if mode == "max" else [8, 7, 5])]
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="abc", mode=mode, save_top_k=1)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, len(values), 1, epoch_metrics=lambda e: {"abc": values[e]})
    assert mc.best_model_score == (5 if mode == "min" else 8)
    assert ckpt_files(tmp_path) == {"epoch=3.ckpt"}
    assert "not finite" in caplog.text
    only_bad = ModelCheckpoint(dirpath=tmp_path / "b", monitor="abc", mode=mode)
    ckpt2, _ = make_checkpointer(tmp_path, [only_bad])
    drive(ckpt2, 1, 1, epoch_metrics=lambda e: {"abc": bad})
    assert only_bad.best_model_score is None and only_bad.best_model_path == ""


def test_current_score_is_saved(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_current_score."""
    mc = ModelCheckpoint(dirpath=tmp_path, save_top_k=3, monitor="foo")
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 1, epoch_metrics=lambda e: {"foo": (e + 1) / 10})
    assert mc.current_score == pytest.approx(0.3)
    scores = sorted(loaded(tmp_path / f)["callbacks"][mc.state_key]["current_score"] for f in ckpt_files(tmp_path))
    assert scores == pytest.approx([0.1, 0.2, 0.3])


def test_last_k_by_monitoring_global_step(tmp_path: Path) -> None:
    mc = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}-{global_step}", monitor="global_step", mode="max", save_top_k=2
    )
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 5, 3)
    assert ckpt_files(tmp_path) == {"epoch=3-global_step=12.ckpt", "epoch=4-global_step=15.ckpt"}


# ------------------------------------------------------------------ last


def test_save_last_with_a_name_template_keeps_one_last_file(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_save_last."""
    class NamedLast(ModelCheckpoint):
        CHECKPOINT_NAME_LAST = "last-{epoch}"

    mc = NamedLast(dirpath=tmp_path, save_top_k=-1, save_last=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 10)
    assert mc.last_model_path == str(tmp_path / "last-epoch=2.ckpt")
    expected = {f"epoch={i}-step={j}.ckpt" for i, j in zip(range(3), [10, 20, 30])} | {"last-epoch=2.ckpt"}
    assert ckpt_files(tmp_path) == expected


def test_save_last_without_monitor_keeps_all_and_last(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_save_last_none_monitor."""
    mc = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_last=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 2, 10)
    assert mc.monitor is None
    assert mc.best_model_path == str(tmp_path / "epoch=1-step=20.ckpt")
    assert mc.last_model_path == str(tmp_path / "last.ckpt")
    assert mc.best_model_score is None and mc.best_k_models == {} and mc.kth_best_model_path == ""
    assert ckpt_files(tmp_path) == {"epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "last.ckpt"}


def test_last_holds_the_latest_state_even_when_the_monitor_gets_worse(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_save_last_checkpoint_contents."""
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=1, save_last=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 2, epoch_metrics=lambda e: {"loss": [1.0, 2.0, 3.0][e]})
    assert ckpt_files(tmp_path) == {"epoch=0.ckpt", "last.ckpt"}
    last = loaded(tmp_path / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)
    best = loaded(tmp_path / "epoch=0.ckpt")
    assert last["callbacks"][mc.state_key]["best_k_models"] == best["callbacks"][mc.state_key]["best_k_models"]


def test_save_last_link_shares_the_newest_file(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=2, save_last="link")
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 1, epoch_metrics=lambda e: {"loss": [3.0, 2.0, 1.0][e]})
    last, newest = tmp_path / "last.ckpt", tmp_path / "epoch=2.ckpt"
    assert os.path.samefile(last, newest)
    manifest = read_manifest(str(last))
    assert manifest is not None and manifest.file == "last.ckpt" and manifest.global_step == 3
    assert ckpt_files(tmp_path) == {"epoch=1.ckpt", "epoch=2.ckpt", "last.ckpt"}


# ------------------------------------------------------------------ versions and collisions


def test_version_counter_after_a_rerun_in_the_same_folder(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_ckpt_version_after_rerun_new_trainer."""
    for run in range(2):
        mc = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, monitor="epoch", mode="max", filename="{epoch}")
        ckpt, _ = make_checkpointer(tmp_path, [mc])
        drive(ckpt, 2, 1)
        expected = {"epoch=0-v1.ckpt", "epoch=1-v1.ckpt"} if run else {"epoch=0.ckpt", "epoch=1.ckpt"}
        assert {Path(p).name for p in mc.best_k_models} == expected
    assert ckpt_files(tmp_path) == {"epoch=0.ckpt", "epoch=1.ckpt", "epoch=0-v1.ckpt", "epoch=1-v1.ckpt"}


def test_version_counter_starts_at_starting_version(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_ckpt_version_after_rerun_same_trainer."""
    class Nine(ModelCheckpoint):
        STARTING_VERSION = 9

    mc = Nine(dirpath=tmp_path, save_top_k=-1, monitor="epoch", mode="max", filename="test")
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 1)
    assert ckpt_files(tmp_path) == {"test.ckpt", "test-v9.ckpt", "test-v10.ckpt"}


def test_fixed_name_without_version_counter_raises_on_collision(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="fixed", save_top_k=-1, enable_version_counter=False)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    with pytest.raises(ConfigurationError, match="enable_version_counter=False"):
        drive(ckpt, 2, 1)
    assert ckpt_files(tmp_path) == {"fixed.ckpt"}
    assert loaded(tmp_path / "fixed.ckpt")["epoch"] == 0


def test_fixed_name_top_1_without_monitor_rewrites_the_same_file(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="latest", enable_version_counter=False)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 3, 1)
    assert ckpt_files(tmp_path) == {"latest.ckpt"}
    assert loaded(tmp_path / "latest.ckpt")["epoch"] == 2


# ------------------------------------------------------------------ weights only


def test_weights_only_files_cannot_resume_optimizer_state(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="w", save_weights_only=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 1, 1)
    data = loaded(tmp_path / "w.ckpt")
    assert "state_dict" in data and "optimizer_states" not in data and "callbacks" not in data
    assert TinyNet.load_from_checkpoint(tmp_path / "w.ckpt").hparams["hidden"] == 8
    fresh, _ = make_checkpointer(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "other")])
    with pytest.raises(MissingStateError, match="save_weights_only"):
        fresh.restore(tmp_path / "w.ckpt")


# ------------------------------------------------------------------ several policies


def test_several_model_checkpoints_do_not_touch_each_others_files(tmp_path: Path) -> None:
    low = ModelCheckpoint(dirpath=tmp_path, filename="low-{epoch}", monitor="a", save_top_k=1)
    high = ModelCheckpoint(dirpath=tmp_path, filename="high-{epoch}", monitor="b", mode="max", save_top_k=1)
    apart = ModelCheckpoint(dirpath=tmp_path / "apart", filename="{epoch}", monitor="a", save_top_k=1)
    ckpt, _ = make_checkpointer(tmp_path, [low, high, apart])
    drive(ckpt, 4, 1, epoch_metrics=lambda e: {"a": [2, 1, 3, 4][e], "b": [1, 2, 3, 0][e]})
    assert ckpt_files(tmp_path) == {"low-epoch=1.ckpt", "high-epoch=2.ckpt"}
    assert ckpt_files(tmp_path / "apart") == {"epoch=1.ckpt"}


def test_two_policies_with_the_same_state_key_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="state key"):
        Checkpointer(tmp_path, callbacks=[ModelCheckpoint(monitor="a"), ModelCheckpoint(monitor="a")])


def test_state_key_is_stable_across_options_that_do_not_change_the_ranking() -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_state_key (a deliberate difference)."""
    a = ModelCheckpoint(monitor="val_loss", every_n_epochs=1, save_top_k=2)
    b = ModelCheckpoint(monitor="val_loss", every_n_epochs=3, save_top_k=5, filename="{epoch}", save_last=True)
    assert a.state_key == b.state_key
    assert a.state_key != ModelCheckpoint(monitor="val_loss", mode="max").state_key
    assert a.state_key != ModelCheckpoint(monitor="val_acc").state_key


# ------------------------------------------------------------------ resume


SCORES = [5.0, 3.0, 4.0, 1.0, 2.0, 0.5]


def run_policy(root: Path, epochs: int, ckpt_path: str | None, **options: Any) -> tuple[Checkpointer, ModelCheckpoint]:
    mc = ModelCheckpoint(dirpath=root / "ckpts", filename="{epoch}", monitor="loss", **options)
    ckpt, _ = make_checkpointer(root, [mc])
    ckpt.restore(ckpt_path)
    drive(ckpt, epochs, 2, epoch_metrics=lambda e: {"loss": SCORES[e]}, start=ckpt.progress.start_epoch)
    return ckpt, mc


def test_top_k_continues_after_resume_as_if_uninterrupted(tmp_path: Path) -> None:
    _, straight = run_policy(tmp_path / "straight", 6, None, save_top_k=2, save_last=True)
    run_policy(tmp_path / "resumed", 3, None, save_top_k=2, save_last=True)
    resumed_ckpt, resumed = run_policy(tmp_path / "resumed", 6, "last", save_top_k=2, save_last=True)
    assert resumed_ckpt.resumed_from == str(tmp_path / "resumed" / "ckpts" / "last.ckpt")
    names = {Path(p).name: s for p, s in resumed.best_k_models.items()}
    assert names == {Path(p).name: s for p, s in straight.best_k_models.items()}
    assert ckpt_files(tmp_path / "resumed" / "ckpts") == ckpt_files(tmp_path / "straight" / "ckpts")


def test_state_holds_paths_relative_to_the_folder(tmp_path: Path) -> None:
    _, mc = run_policy(tmp_path, 2, None, save_top_k=2, save_last=True)
    state = mc.state_dict()
    assert set(state["best_k_models"]) == {"epoch=0.ckpt", "epoch=1.ckpt"}
    assert state["last_model_path"] == "last.ckpt"


def test_changing_every_n_epochs_keeps_the_state_and_orphans_nothing(tmp_path: Path) -> None:
    run_policy(tmp_path, 2, None, save_top_k=2)
    ckpt, mc = run_policy(tmp_path, 6, "last", save_top_k=2, every_n_epochs=2)
    # epochs 3 and 5 are saved (every 2nd) and ranked against the restored top-k: epoch 0 is
    # pruned; epoch 1 left the top-k too but stays because the run resumed from it
    assert {Path(p).name for p in mc.best_k_models} == {"epoch=3.ckpt", "epoch=5.ckpt"}
    assert Path(str(ckpt.resumed_from)).name == "epoch=1.ckpt"
    assert ckpt_files(tmp_path / "ckpts") == {"epoch=1.ckpt", "epoch=3.ckpt", "epoch=5.ckpt"}


def test_best_resolves_in_a_new_process_from_manifests(tmp_path: Path) -> None:
    run_policy(tmp_path, 4, None, save_top_k=2, save_last=True)
    mc = ModelCheckpoint(dirpath=tmp_path / "ckpts", filename="{epoch}", monitor="loss", save_top_k=2)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    assert ckpt.find_checkpoint("best") == str(tmp_path / "ckpts" / "epoch=3.ckpt")
    report = ckpt.restore("best")
    assert report is not None and report.epoch == 3


def test_best_without_a_monitor_or_without_files(tmp_path: Path) -> None:
    ckpt, _ = make_checkpointer(tmp_path, [ModelCheckpoint(dirpath=tmp_path)])
    with pytest.raises(ConfigurationError, match="monitor"):
        ckpt.restore("best")
    ckpt2, _ = make_checkpointer(tmp_path, [ModelCheckpoint(dirpath=tmp_path, monitor="loss")])
    with pytest.raises(CheckpointNotFoundError, match="best"):
        ckpt2.restore("best")


# ------------------------------------------------------------------ deletion guards


def test_never_deletes_the_file_the_run_resumed_from(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_resume_and_old_checkpoint_files_remain (same folder)."""
    run_policy(tmp_path, 2, None, save_top_k=1)  # keeps epoch=1 (loss 3.0)
    resumed_from = tmp_path / "ckpts" / "epoch=1.ckpt"
    _, mc = run_policy(tmp_path, 4, str(resumed_from), save_top_k=1)
    assert Path(mc.best_model_path).name == "epoch=3.ckpt"
    assert resumed_from.exists() and read_manifest(str(resumed_from)) is not None


def test_never_deletes_a_file_it_did_not_write(tmp_path: Path) -> None:
    folder = tmp_path / "ckpts"
    ckpt, _ = make_checkpointer(tmp_path, [], enable_checkpointing=False)
    foreign = folder / "epoch=0.ckpt"
    ckpt.save_checkpoint(foreign)  # written by hand, not by the policy
    run_policy(tmp_path, 3, None, save_top_k=1, enable_version_counter=True)
    assert foreign.exists()
    mc2 = ModelCheckpoint(dirpath=folder, monitor="loss", save_top_k=1)
    ckpt2, _ = make_checkpointer(tmp_path, [mc2])
    mc2.load_state_dict({"best_k_models": {"epoch=0.ckpt": 9.0}})  # bookkeeping claims the foreign file
    drive(ckpt2, 1, 1, epoch_metrics=lambda e: {"loss": 1.0})
    assert foreign.exists(), "a file another writer committed must survive pruning"


def test_old_file_is_deleted_only_after_its_replacement_is_committed(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", monitor="loss", save_top_k=1)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    order: list[tuple[str, bool]] = []
    original = ckpt.store.remove

    def spy(path: str) -> None:
        newest = tmp_path / f"epoch={ckpt.current_epoch}.ckpt"
        order.append((Path(path).name, read_manifest(str(newest)) is not None))
        original(path)

    ckpt.store.remove = spy  # type: ignore[method-assign]
    drive(ckpt, 3, 1, epoch_metrics=lambda e: {"loss": 3.0 - e})
    assert order == [("epoch=0.ckpt", True), ("epoch=1.ckpt", True)]


def test_keep_milestones_retains_what_top_k_prunes(tmp_path: Path) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, filename="{step}", monitor="loss", save_top_k=1, every_n_train_steps=2)
    milestones = KeepMilestones(every_n_train_steps=4)
    ckpt, _ = make_checkpointer(tmp_path, [mc, milestones])
    drive(ckpt, 1, 12, step_metrics=lambda e, b: {"loss": 100.0 - b})
    # step files 2..12 were each the best when written; steps 2, 4, 8, 12 opened windows 0, 1, 2, 3
    assert ckpt_files(tmp_path) == {"step=2.ckpt", "step=4.ckpt", "step=8.ckpt", "step=12.ckpt"}
    assert Path(mc.best_model_path).name == "step=12.ckpt"
    state = milestones.state_dict()
    assert sorted(Path(p).name for p in state["milestones"].values()) == sorted(
        ["step=2.ckpt", "step=4.ckpt", "step=8.ckpt", "step=12.ckpt"]
    )


def test_keep_milestones_options() -> None:
    with pytest.raises(ConfigurationError):
        KeepMilestones()
    with pytest.raises(ConfigurationError):
        KeepMilestones(every_n_train_steps=0)
    with pytest.raises(ConfigurationError):
        KeepMilestones(every_n_train_steps=2, every=timedelta(hours=1))
    assert KeepMilestones(every=timedelta(hours=2)).state_dict() == {"milestones": {}, "origin": None}


def test_verbose_logs_decisions(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="loss", save_top_k=1, verbose=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 2, 1, epoch_metrics=lambda e: {"loss": [1.0, 2.0][e]})
    assert "reached 1.0" in caplog.text
    assert "is not in the top 1" in caplog.text


def test_missing_monitor_warns_and_still_saves_last(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mc = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True)
    ckpt, _ = make_checkpointer(tmp_path, [mc])
    drive(ckpt, 1, 1)
    assert "found no logged metric 'val_loss'" in caplog.text
    assert ckpt_files(tmp_path) == {"last.ckpt"}
