"""Full training state survives save_checkpoint(path) -> new Checkpointer + fresh objects -> restore.

The saving process and the restoring process share nothing but the file: every restore builds new
objects (from another seed, so a silent no-op restore cannot pass) and a new Checkpointer.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ckpthooks import Checkpointer, RestoreReport
from tests.helpers import (
    CountingCallback,
    StatefulDataModule,
    StatefulTensorHolder,
    TinyNet,
    assert_state_equal,
    make_data,
)

EPOCHS = 2
BATCHES = 3
EXTRA_STEPS = 1  # steps into the third epoch when the checkpoint is taken (a mid-epoch save)
SAVED_STEP = EPOCHS * BATCHES + EXTRA_STEPS


@dataclass
class Run:
    """The objects of one (simulated) training process."""

    ckpt: Checkpointer
    model: TinyNet
    adamw: torch.optim.AdamW
    sgd: torch.optim.SGD
    step_lr: torch.optim.lr_scheduler.StepLR
    exp_lr: torch.optim.lr_scheduler.ExponentialLR
    scaler: torch.amp.GradScaler
    callback: CountingCallback
    datamodule: StatefulDataModule
    ema: StatefulTensorHolder


def build_run(root: Path, seed: int) -> Run:
    torch.manual_seed(seed)
    model = TinyNet(hidden=6, dropout=0.25)
    adamw = torch.optim.AdamW(model.l1.parameters(), lr=1e-2, weight_decay=0.01)
    sgd = torch.optim.SGD(model.l2.parameters(), lr=0.1, momentum=0.9)
    step_lr = torch.optim.lr_scheduler.StepLR(adamw, step_size=2, gamma=0.5)
    exp_lr = torch.optim.lr_scheduler.ExponentialLR(sgd, gamma=0.9)
    # growth_interval=1: every update without inf/nan doubles the scale, so it differs from the start
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    callback = CountingCallback()
    datamodule = StatefulDataModule(seed=100 + seed)
    ema = StatefulTensorHolder(fill=float(seed))
    ckpt = Checkpointer(default_root_dir=root, callbacks=[callback], enable_checkpointing=False)
    ckpt.track(
        model=model,
        optimizers=[adamw, sgd],
        lr_schedulers=[step_lr, exp_lr],
        scaler=scaler,
        datamodule=datamodule,
        ema=ema,
    )
    return Run(ckpt, model, adamw, sgd, step_lr, exp_lr, scaler, callback, datamodule, ema)


def amp_step(run: Run, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    loss = nn.functional.mse_loss(run.model(x), y)
    run.adamw.zero_grad()
    run.sgd.zero_grad()
    run.scaler.scale(loss).backward()
    run.scaler.step(run.adamw)
    run.scaler.step(run.sgd)
    run.scaler.update()
    run.ema.update(0.5)
    run.ckpt.step_end()


def train_until_save_point(run: Run) -> None:
    """Two full epochs, then EXTRA_STEPS steps of the third one."""
    for epoch in range(EPOCHS):
        run.ckpt.epoch_start(epoch)
        for batch in make_data(BATCHES, seed=epoch):
            amp_step(run, batch)
        run.step_lr.step()
        run.exp_lr.step()
        run.datamodule.epochs_served += 1
        run.ckpt.epoch_end()
    run.ckpt.epoch_start(EPOCHS)
    for batch in make_data(BATCHES, seed=EPOCHS)[:EXTRA_STEPS]:
        amp_step(run, batch)


def draws() -> dict[str, Any]:
    return {
        "python": [random.random() for _ in range(3)],
        "numpy": np.random.rand(3).tolist(),
        "torch": torch.rand(3),
    }


@dataclass
class Saved:
    path: Path
    states: dict[str, Any]
    draws_after_save: dict[str, Any]
    checkpoint: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def saved(tmp_path: Path) -> Saved:
    run = build_run(tmp_path, seed=0)
    random.seed(1)
    np.random.seed(2)
    train_until_save_point(run)
    states = copy.deepcopy(
        {
            "model": run.model.state_dict(),
            "adamw": run.adamw.state_dict(),
            "sgd": run.sgd.state_dict(),
            "step_lr": run.step_lr.state_dict(),
            "exp_lr": run.exp_lr.state_dict(),
            "scaler": run.scaler.state_dict(),
            "callback": run.callback.state_dict(),
            "datamodule": run.datamodule.state_dict(),
            "ema": run.ema.state_dict(),
            "hparams": dict(run.model.hparams),
            "progress": run.ckpt.progress.state_dict(),
        }
    )
    path = tmp_path / "full.ckpt"
    run.ckpt.save_checkpoint(path)
    return Saved(path=path, states=states, draws_after_save=draws())


@dataclass
class Restored:
    run: Run
    report: RestoreReport
    draws_after_restore: dict[str, Any]


@pytest.fixture
def restored(saved: Saved, tmp_path: Path) -> Restored:
    run = build_run(tmp_path / "other-process", seed=7)
    random.seed(11)
    np.random.seed(12)
    report = run.ckpt.restore(saved.path)
    assert report is not None
    return Restored(run=run, report=report, draws_after_restore=draws())


@pytest.fixture
def on_disk(saved: Saved) -> dict[str, Any]:
    checkpoint: dict[str, Any] = torch.load(saved.path, weights_only=True)
    return checkpoint


# --------------------------------------------------------------------------- the fixtures are sound


def test_fresh_objects_differ_from_saved_before_restore(saved: Saved, tmp_path: Path) -> None:
    run = build_run(tmp_path / "fresh", seed=7)
    assert not torch.equal(run.model.l1.weight, saved.states["model"]["l1.weight"])
    assert run.adamw.state_dict()["state"] == {}
    assert run.scaler.get_scale() != saved.states["scaler"]["scale"]
    assert run.ckpt.global_step == 0


def test_saved_scaler_scale_changed_during_training(saved: Saved) -> None:
    assert saved.states["scaler"]["scale"] == 2.0**8 * 2**SAVED_STEP


# --------------------------------------------------------------------------- restored values


def test_model_weights_equal_saved_after_restore(saved: Saved, restored: Restored) -> None:
    assert_state_equal(restored.run.model.state_dict(), saved.states["model"], "model")


def test_adamw_state_equal_saved_after_restore(saved: Saved, restored: Restored) -> None:
    state = restored.run.adamw.state_dict()
    assert_state_equal(state, saved.states["adamw"], "adamw")
    assert float(state["state"][0]["step"]) == SAVED_STEP


def test_sgd_momentum_buffers_equal_saved_after_restore(saved: Saved, restored: Restored) -> None:
    state = restored.run.sgd.state_dict()
    assert_state_equal(state, saved.states["sgd"], "sgd")
    assert state["state"][0]["momentum_buffer"] is not None


def test_lr_schedulers_equal_saved_after_restore(saved: Saved, restored: Restored) -> None:
    assert_state_equal(restored.run.step_lr.state_dict(), saved.states["step_lr"], "step_lr")
    assert_state_equal(restored.run.exp_lr.state_dict(), saved.states["exp_lr"], "exp_lr")
    assert restored.run.step_lr.last_epoch == EPOCHS
    assert restored.run.exp_lr.last_epoch == EPOCHS


def test_optimizer_learning_rates_follow_restored_schedulers(restored: Restored) -> None:
    assert restored.run.adamw.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5)
    assert restored.run.sgd.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9**EPOCHS)


def test_grad_scaler_scale_and_growth_tracker_equal_saved(saved: Saved, restored: Restored) -> None:
    assert restored.run.scaler.state_dict() == saved.states["scaler"]
    assert restored.run.scaler.get_scale() == 2.0**8 * 2**SAVED_STEP


def test_epoch_and_global_step_restored(restored: Restored) -> None:
    assert restored.run.ckpt.current_epoch == EPOCHS
    assert restored.run.ckpt.global_step == SAVED_STEP
    assert (restored.report.epoch, restored.report.global_step) == (EPOCHS, SAVED_STEP)


def test_mid_epoch_loop_position_restored(saved: Saved, restored: Restored) -> None:
    progress = restored.run.ckpt.progress
    assert progress.state_dict() == saved.states["progress"]
    assert progress.epoch_finished is False
    assert progress.start_epoch == EPOCHS
    assert progress.batches_to_skip == EXTRA_STEPS


def test_stateful_callback_restored(restored: Restored) -> None:
    assert restored.run.callback.batches == SAVED_STEP


def test_datamodule_state_restored(saved: Saved, restored: Restored) -> None:
    assert restored.run.datamodule.state_dict() == {"seed": 100, "epochs_served": EPOCHS}
    assert restored.run.datamodule.state_dict() == saved.states["datamodule"]


def test_object_tracked_by_name_restored(saved: Saved, restored: Restored) -> None:
    assert_state_equal(restored.run.ema.state_dict(), saved.states["ema"], "ema")
    assert restored.run.ema.updates == SAVED_STEP


def test_python_random_draws_after_restore_equal_draws_after_save(
    saved: Saved, restored: Restored
) -> None:
    assert restored.draws_after_restore["python"] == saved.draws_after_save["python"]


def test_numpy_random_draws_after_restore_equal_draws_after_save(
    saved: Saved, restored: Restored
) -> None:
    assert restored.draws_after_restore["numpy"] == saved.draws_after_save["numpy"]


def test_torch_random_draws_after_restore_equal_draws_after_save(
    saved: Saved, restored: Restored
) -> None:
    assert torch.equal(restored.draws_after_restore["torch"], saved.draws_after_save["torch"])


def test_restore_report_lists_every_component_and_nothing_missing(restored: Restored) -> None:
    report = restored.report
    assert report.missing == []
    assert report.unexpected == []
    assert set(report.restored) >= {
        "model",
        "optimizers",
        "lr_schedulers",
        "scaler",
        "datamodule",
        "callbacks",
        "progress",
        "rng",
        "ema",
    }


def test_restore_records_resumed_from(saved: Saved, restored: Restored) -> None:
    assert restored.run.ckpt.resumed_from == str(saved.path)
    assert restored.report.path == str(saved.path)


def test_training_after_restore_matches_uninterrupted_training(tmp_path: Path) -> None:
    """Dropout draws from torch's RNG, so equal weights need RNG, optimizer and scaler restored."""
    original = build_run(tmp_path, seed=0)
    train_until_save_point(original)
    path = tmp_path / "mid.ckpt"
    original.ckpt.save_checkpoint(path)
    rest = make_data(BATCHES, seed=EPOCHS)[EXTRA_STEPS:]
    for batch in rest:
        amp_step(original, batch)

    resumed = build_run(tmp_path / "resumed", seed=3)
    resumed.ckpt.restore(path)
    for batch in rest:
        amp_step(resumed, batch)

    assert_state_equal(resumed.model.state_dict(), original.model.state_dict(), "model")
    assert_state_equal(resumed.adamw.state_dict(), original.adamw.state_dict(), "adamw")
    assert resumed.scaler.get_scale() == original.scaler.get_scale()
    assert resumed.ckpt.global_step == original.ckpt.global_step == EPOCHS * BATCHES + BATCHES


# --------------------------------------------------------------------------- the file's layout


def test_file_loads_with_plain_torch_load_weights_only(saved: Saved) -> None:
    checkpoint = torch.load(saved.path, weights_only=True)
    assert isinstance(checkpoint, dict)
    assert_state_equal(checkpoint["state_dict"], saved.states["model"], "state_dict")


def test_file_has_lightning_layout_keys(on_disk: dict[str, Any]) -> None:
    expected = {
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "MixedPrecision",
        "callbacks",
        "hyper_parameters",
        "hparams_name",
    }
    assert expected <= set(on_disk)
    assert isinstance(on_disk["pytorch-lightning_version"], str)


def test_epoch_and_global_step_are_top_level_ints(on_disk: dict[str, Any]) -> None:
    assert on_disk["epoch"] == EPOCHS
    assert on_disk["global_step"] == SAVED_STEP


def test_optimizer_states_is_list_in_tracking_order(saved: Saved, on_disk: dict[str, Any]) -> None:
    states = on_disk["optimizer_states"]
    assert isinstance(states, list)
    assert len(states) == 2
    assert_state_equal(states[0], saved.states["adamw"], "optimizer_states[0]")
    assert_state_equal(states[1], saved.states["sgd"], "optimizer_states[1]")


def test_lr_schedulers_is_list_in_tracking_order(saved: Saved, on_disk: dict[str, Any]) -> None:
    schedulers = on_disk["lr_schedulers"]
    assert isinstance(schedulers, list)
    assert len(schedulers) == 2
    assert_state_equal(schedulers[0], saved.states["step_lr"], "lr_schedulers[0]")
    assert_state_equal(schedulers[1], saved.states["exp_lr"], "lr_schedulers[1]")


def test_scaler_state_stored_under_mixed_precision(saved: Saved, on_disk: dict[str, Any]) -> None:
    assert on_disk["MixedPrecision"] == saved.states["scaler"]
    assert "native_amp_scaling_state" not in on_disk


def test_callback_state_stored_under_its_state_key(on_disk: dict[str, Any]) -> None:
    assert CountingCallback().state_key == "CountingCallback"
    # besides: the entry Lightning's Trainer asks for the ckpthooks-only state by (see test_lightning_interop)
    assert {k: v for k, v in on_disk["callbacks"].items() if k != "CkpthooksState"} == {
        "CountingCallback": {"batches": SAVED_STEP}
    }


def test_datamodule_state_stored_under_class_qualname(on_disk: dict[str, Any]) -> None:
    assert on_disk[StatefulDataModule.__qualname__] == {"seed": 100, "epochs_served": EPOCHS}


def test_hyperparameters_stored_with_hparams_name(on_disk: dict[str, Any]) -> None:
    assert on_disk["hyper_parameters"] == {"in_dim": 4, "hidden": 6, "out_dim": 1, "dropout": 0.25}
    assert type(on_disk["hyper_parameters"]) is dict
    assert on_disk["hparams_name"] == "kwargs"


def test_loop_progress_stored_in_ckpthooks_namespace(on_disk: dict[str, Any]) -> None:
    assert on_disk["ckpthooks"]["loop"] == {
        "epoch": EPOCHS,
        "batch_idx": EXTRA_STEPS,
        "global_step": SAVED_STEP,
        "epoch_finished": False,
        "epoch_rng": None,  # recorded by batches(); this loop steps by hand
        "validated": False,  # no validation in this epoch yet (epoch_end() would stand in for one)
        "batch_end_pending": False,  # saved between batches, not inside one
    }


def test_tracked_object_stored_under_its_name_in_components(
    saved: Saved, on_disk: dict[str, Any]
) -> None:
    stored = on_disk["ckpthooks"]["components"]["ema"]
    assert_state_equal(stored, saved.states["ema"], "components['ema']")


def test_rng_states_stored_in_components(on_disk: dict[str, Any]) -> None:
    rng = on_disk["ckpthooks"]["components"]["rng"]
    assert {"python", "numpy", "torch"} <= set(rng)
    assert isinstance(rng["torch"], torch.Tensor)


# --------------------------------------------------------------------------- AMP scaler edge cases


def _model_only_run(root: Path, scaler: torch.amp.GradScaler | None = None) -> Checkpointer:
    ckpt = Checkpointer(default_root_dir=root, enable_checkpointing=False)
    ckpt.track(model=TinyNet(), scaler=scaler)
    return ckpt


def test_disabled_grad_scaler_is_not_written(tmp_path: Path) -> None:
    ckpt = _model_only_run(tmp_path, torch.amp.GradScaler("cpu", enabled=False))
    ckpt.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert "MixedPrecision" not in checkpoint
    assert "native_amp_scaling_state" not in checkpoint


def test_disabled_grad_scaler_does_not_count_as_missing(tmp_path: Path) -> None:
    _model_only_run(tmp_path).save_checkpoint(tmp_path / "no-scaler.ckpt")
    ckpt = _model_only_run(tmp_path / "other", torch.amp.GradScaler("cpu", enabled=False))
    report = ckpt.restore(tmp_path / "no-scaler.ckpt")  # strict by default
    assert report is not None
    assert report.missing == []
    assert "scaler" not in report.restored


def test_scaler_restored_from_legacy_native_amp_scaling_state_key(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=3.0, growth_interval=7)
    scaler.scale(torch.tensor(1.0))  # initialise the scale tensor
    scaler.update(new_scale=96.0)
    _model_only_run(tmp_path, scaler).save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    checkpoint["native_amp_scaling_state"] = checkpoint.pop("MixedPrecision")
    torch.save(checkpoint, tmp_path / "old-layout.ckpt")

    fresh = torch.amp.GradScaler("cpu")
    ckpt = _model_only_run(tmp_path / "other", fresh)
    report = ckpt.restore(tmp_path / "old-layout.ckpt")
    assert report is not None
    assert "scaler" in report.restored
    assert fresh.get_scale() == 96.0
    assert fresh.get_growth_interval() == 7
