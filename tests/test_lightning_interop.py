"""Checkpoints move both ways between ckpthooks and the real Lightning package.

ckpthooks -> Lightning: a plain loop's file loads with ``LightningModule.load_from_checkpoint`` and
resumes ``Trainer.fit(ckpt_path=...)`` with epoch, global step, optimizer, LR scheduler, AMP scaler,
datamodule and ModelCheckpoint state. Lightning -> ckpthooks: a Trainer's file resumes a plain loop.
The AMP scaler is a real ``GradScaler`` on both sides: Lightning's ``MixedPrecision`` plugin on CPU
normally means bf16 without a scaler, so the Trainers here get a ``MixedPrecision("16-mixed", "cpu",
scaler=GradScaler("cpu"))`` instance (fp16 autocast on CPU with loss scaling), which Lightning saves
and restores under the ``MixedPrecision`` key like on a GPU.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pytest.importorskip("lightning")

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.precision import MixedPrecision

from ckpthooks import Checkpointer, HyperparametersMixin, ModelCheckpoint
from ckpthooks.interop import LightningInteropWarning
from ckpthooks.interop._lightning_layout import (
    STATE_CALLBACK_KEY,
    lightning_model_checkpoint_key,
    parse_lightning_model_checkpoint_key,
)
from ckpthooks.interop._lightning_loops import fit_loop_state, loop_record_from_lightning
from ckpthooks.interop.lightning_callback import CkpthooksState
from tests.helpers import assert_state_equal

pytestmark = [
    pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
]

BATCHES = 3  # per epoch
MONITOR = "train_loss"


@pytest.fixture(autouse=True, scope="module")
def _quiet_lightning() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    yield
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


# --------------------------------------------------------------------------- the two sides


class PlainNet(HyperparametersMixin, nn.Module):
    """The plain-loop model."""

    def __init__(self, hidden: int = 6, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.l1 = nn.Linear(4, hidden)
        self.l2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))


class LitNet(pl.LightningModule):
    """The same architecture as a LightningModule (same parameter names)."""

    def __init__(self, hidden: int = 6, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.l1 = nn.Linear(4, hidden)
        self.l2 = nn.Linear(hidden, 1)
        self.batches_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.batches_seen += 1
        x, y = batch
        loss = nn.functional.mse_loss(self(x).float(), y)
        self.log(MONITOR, loss)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class CountingData(pl.LightningDataModule):
    """A datamodule with state; the plain loop uses the same class (its state is keyed by class name)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        generator = torch.Generator().manual_seed(seed)
        self.data = [
            (torch.randn(4, 4, generator=generator), torch.randn(4, 1, generator=generator)) for _ in range(BATCHES)
        ]
        self.loaders_made = 0

    def train_dataloader(self) -> DataLoader[Any]:
        self.loaders_made += 1
        return DataLoader(self.data, batch_size=None)  # the prepared batches, in order

    def state_dict(self) -> dict[str, Any]:
        return {"loaders_made": self.loaders_made, "seed": self.hparams.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loaders_made = state_dict["loaders_made"]


def grad_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)


def trainer(root: Path, max_epochs: int, callbacks: list[pl.Callback] | None = None, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        limit_train_batches=BATCHES,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
        default_root_dir=root,
        num_sanity_val_steps=0,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=grad_scaler())],
        callbacks=callbacks or [],
        **kwargs,
    )


class PlainRun:
    """A plain training loop with everything Lightning has: model, optimizer, scheduler, AMP scaler,
    datamodule, a ModelCheckpoint."""

    def __init__(
        self, root: Path, seed: int = 0, dm_seed: int = 0, extra_callbacks: tuple[Any, ...] = (), **policy: Any
    ) -> None:
        torch.manual_seed(seed)
        self.model = PlainNet()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.5)
        self.scaler = grad_scaler()
        self.dm = CountingData(seed=dm_seed)
        policy = {"dirpath": root / "checkpoints", "monitor": MONITOR, "save_top_k": 2, **policy}
        self.mc = ModelCheckpoint(**policy)
        self.ckpt = Checkpointer(root, callbacks=[self.mc, *extra_callbacks]).track(
            model=self.model,
            optimizers=self.optimizer,
            lr_schedulers=self.scheduler,
            scaler=self.scaler,
            datamodule=self.dm,
        )

    def train(self, max_epochs: int, ckpt_path: str | None = None) -> Any:
        @self.ckpt.loop(max_epochs=max_epochs, ckpt_path=ckpt_path)
        def epoch() -> None:
            for x, y in self.ckpt.batches(self.dm.train_dataloader()):
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = nn.functional.mse_loss(self.model(x).float(), y)
                self.optimizer.zero_grad()
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.ckpt.log(MONITOR, loss)
            self.scheduler.step()

        return epoch()


class Probe(pl.Callback):
    """Records what the Trainer restored: the datamodule's state right after it is restored (the
    Trainer asks the datamodule for a new loader before training starts), the rest at the start of
    training (after the whole restore)."""

    datamodule: dict[str, Any] | None = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Any) -> None:
        self.datamodule = trainer.datamodule.state_dict() if trainer.datamodule is not None else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.global_step = trainer.global_step
        self.current_epoch = trainer.current_epoch
        self.optimizer = copy.deepcopy(trainer.optimizers[0].state_dict())
        self.scheduler = copy.deepcopy(trainer.lr_scheduler_configs[0].scheduler.state_dict())
        precision = trainer.precision_plugin
        assert isinstance(precision, MixedPrecision) and precision.scaler is not None
        self.scaler = precision.scaler.state_dict()
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.checkpoint_callbacks = [
            copy.deepcopy(cb.state_dict()) for cb in trainer.callbacks if isinstance(cb, LightningModelCheckpoint)
        ]


def load(path: str | Path) -> dict[str, Any]:
    checkpoint: dict[str, Any] = torch.load(path, weights_only=True)
    return checkpoint


def interop_messages(record: Any) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, LightningInteropWarning)]


# --------------------------------------------------------------------------- the layout itself


def test_our_loops_are_what_lightning_writes_at_the_same_points(tmp_path: Path) -> None:
    """Same schedule on both sides (every 2 steps, and every epoch end): the fit-loop progress in our
    files equals Lightning's, save for counters ckpthooks cannot know (see fit_loop_state)."""
    dm = CountingData()
    steps, epochs = tmp_path / "lt-steps", tmp_path / "lt-epochs"
    lit_callbacks = [
        LightningModelCheckpoint(dirpath=steps, every_n_train_steps=2, save_top_k=-1),
        LightningModelCheckpoint(dirpath=epochs, save_top_k=-1, save_on_train_epoch_end=True),
    ]
    trainer(tmp_path / "lt", 2, lit_callbacks).fit(LitNet(), datamodule=dm)

    run = PlainRun(
        tmp_path / "ours",
        extra_callbacks=(ModelCheckpoint(dirpath=tmp_path / "our-epochs", save_top_k=-1),),
        dirpath=tmp_path / "our-steps",
        monitor=None,
        save_top_k=-1,
        every_n_train_steps=2,
    )
    run.train(2)

    unknown_to_ckpthooks = {
        "epoch_loop.scheduler_progress",
        "epoch_loop.manual_optimization.optim_step_progress",
    }
    compared = 0
    for theirs_dir, ours_dir in ((steps, tmp_path / "our-steps"), (epochs, tmp_path / "our-epochs")):
        names = sorted(n for n in os.listdir(theirs_dir) if n.endswith(".ckpt"))
        assert names == sorted(n for n in os.listdir(ours_dir) if n.endswith(".ckpt"))
        for name in names:
            theirs, ours = load(theirs_dir / name), load(ours_dir / name)
            assert (ours["epoch"], ours["global_step"]) == (theirs["epoch"], theirs["global_step"]), name
            for loop in ("validate_loop", "test_loop", "predict_loop"):
                assert ours["loops"][loop] == theirs["loops"][loop], (name, loop)
            their_fit, our_fit = theirs["loops"]["fit_loop"], ours["loops"]["fit_loop"]
            assert set(our_fit) == set(their_fit)
            for key in sorted(set(their_fit) - unknown_to_ckpthooks):
                assert our_fit[key] == their_fit[key], (name, key)
            compared += 1
    # steps 2, 4 (mid-epoch), 6 (after the last batch of epoch 1); epoch ends 0 and 1
    assert compared == 5


def test_state_keys_of_lightnings_model_checkpoint() -> None:
    ours = ModelCheckpoint(monitor="val/loss", mode="max", train_time_interval=timedelta(minutes=5))
    theirs = LightningModelCheckpoint(monitor="val/loss", mode="max", train_time_interval=timedelta(minutes=5))
    assert lightning_model_checkpoint_key(ours) == theirs.state_key
    assert lightning_model_checkpoint_key(ModelCheckpoint()) == LightningModelCheckpoint().state_key
    assert parse_lightning_model_checkpoint_key(theirs.state_key) == {
        "monitor": "val/loss",
        "mode": "max",
        "every_n_train_steps": 0,
        "every_n_epochs": 0,
        "train_time_interval": None,  # the timedelta is not needed to match a monitor
    }
    assert parse_lightning_model_checkpoint_key(ours.state_key) is None  # ckpthooks' own key
    assert parse_lightning_model_checkpoint_key("EarlyStopping{'monitor': 'x', 'mode': 'min'}") is None


def test_loop_position_from_a_file_saved_after_fit(tmp_path: Path) -> None:
    """trainer.save_checkpoint after fit: two epochs completed, the third not started."""
    t = trainer(tmp_path, 2, enable_checkpointing=False)
    t.fit(LitNet(), datamodule=CountingData())
    t.save_checkpoint(tmp_path / "after.ckpt")
    record = loop_record_from_lightning(load(tmp_path / "after.ckpt"))
    assert record == {"epoch": 2, "batch_idx": 0, "global_step": 6, "epoch_finished": False}
    # and our own "not started" position is the same state
    ours = fit_loop_state(epoch=2, batch_idx=0, global_step=6, epoch_finished=False)
    assert ours["epoch_progress"] == load(tmp_path / "after.ckpt")["loops"]["fit_loop"]["epoch_progress"]


# --------------------------------------------------------------------------- ckpthooks -> Lightning


@pytest.fixture
def our_run(tmp_path: Path) -> PlainRun:
    """Two epochs of a plain loop; its ModelCheckpoint keeps the 2 best by train_loss and last.ckpt."""
    run = PlainRun(tmp_path / "ours", save_last=True)
    run.train(2)
    return run


def test_our_checkpoint_loads_with_load_from_checkpoint(our_run: PlainRun) -> None:
    path = our_run.mc.last_model_path
    model = LitNet.load_from_checkpoint(path)
    assert dict(model.hparams) == {"hidden": 6, "lr": 0.1}
    assert_state_equal(model.state_dict(), our_run.model.state_dict(), "weights")
    overridden = LitNet.load_from_checkpoint(path, lr=0.05)
    assert dict(overridden.hparams) == {"hidden": 6, "lr": 0.05}
    assert_state_equal(overridden.state_dict(), our_run.model.state_dict(), "weights")


def test_trainer_fit_resumes_our_checkpoint(our_run: PlainRun, tmp_path: Path) -> None:
    path = our_run.mc.last_model_path
    saved = load(path)
    assert (saved["epoch"], saved["global_step"]) == (1, 2 * BATCHES)
    probe = Probe()
    lit_mc = LightningModelCheckpoint(dirpath=our_run.mc.dirpath, monitor=MONITOR, save_top_k=2, save_last=True)
    lit = LitNet()
    dm = CountingData()
    t = trainer(tmp_path / "lt", 3, [probe, lit_mc])
    with pytest.warns(UserWarning, match=f"Please add the following callbacks: .*{STATE_CALLBACK_KEY}"):
        t.fit(lit, datamodule=dm, ckpt_path=path)

    # restored: epoch, step, weights, optimizer, scheduler, scaler, datamodule, ModelCheckpoint
    assert (probe.current_epoch, probe.global_step) == (2, 2 * BATCHES)
    assert_state_equal(probe.weights, saved["state_dict"], "weights")
    assert_state_equal(probe.optimizer["state"], saved["optimizer_states"][0]["state"], "optimizer state")
    assert probe.optimizer["state"][0]["momentum_buffer"].abs().sum() > 0
    assert probe.scheduler == saved["lr_schedulers"][0] == our_run.scheduler.state_dict()
    assert probe.scheduler["last_epoch"] == 2
    assert probe.scaler == saved["MixedPrecision"] == our_run.scaler.state_dict()
    assert probe.scaler["scale"] != 2.0**10  # it grew during our run
    assert probe.datamodule == our_run.dm.state_dict()
    [lit_state] = probe.checkpoint_callbacks
    assert lit_state["best_model_path"] == our_run.mc.best_model_path
    assert {p: float(s) for p, s in lit_state["best_k_models"].items()} == pytest.approx(our_run.mc.best_k_models)
    assert float(lit_state["best_model_score"]) == pytest.approx(our_run.mc.best_model_score)
    # and training went on from there: one more epoch
    assert (t.current_epoch, t.global_step, lit.batches_seen) == (3, 3 * BATCHES, BATCHES)


class ManualLitNet(LitNet):
    """The same model with manual optimization: Lightning counts its global step elsewhere."""

    def __init__(self, hidden: int = 6, lr: float = 0.1) -> None:
        super().__init__(hidden, lr)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_trainer_fit_resumes_our_checkpoint_with_manual_optimization(our_run: PlainRun, tmp_path: Path) -> None:
    probe = Probe()
    lit = ManualLitNet()
    t = trainer(tmp_path / "lt", 3, [probe], enable_checkpointing=False)
    t.fit(lit, datamodule=CountingData(), ckpt_path=our_run.mc.last_model_path)
    assert (probe.current_epoch, probe.global_step) == (2, 2 * BATCHES)
    assert (t.current_epoch, t.global_step, lit.batches_seen) == (3, 3 * BATCHES, BATCHES)


@pytest.mark.parametrize(("every", "resumed_epoch", "batches_left"), [(5, 1, 1), (3, 2, 0)])
def test_trainer_fit_resumes_our_mid_epoch_checkpoint(
    tmp_path: Path, every: int, resumed_epoch: int, batches_left: int
) -> None:
    """Saved after a training step: 5 is inside epoch 1; 3 * 2 = 6 is after epoch 1's last batch,
    before its end events (Lightning's is_last_batch then starts the next epoch)."""
    run = PlainRun(tmp_path / "ours", monitor=None, save_top_k=-1, every_n_train_steps=every)
    run.train(2)
    saved_step = 5 if every == 5 else 6
    path = run.mc.format_checkpoint_name({"epoch": 1, "step": saved_step})
    assert load(path)["global_step"] == saved_step
    probe = Probe()
    lit = LitNet()
    t = trainer(tmp_path / "lt", 3, [probe], enable_checkpointing=False)
    with pytest.warns(UserWarning, match=f"Please add the following callbacks: .*{STATE_CALLBACK_KEY}"):
        t.fit(lit, datamodule=CountingData(), ckpt_path=path)
    assert (probe.current_epoch, probe.global_step) == (resumed_epoch, saved_step)
    assert lit.batches_seen == batches_left + BATCHES * (3 - 2)
    assert (t.current_epoch, t.global_step) == (3, saved_step + lit.batches_seen)


def test_ckpthooks_state_callback_restores_rng_and_names_what_lightning_cannot(tmp_path: Path) -> None:
    run = PlainRun(tmp_path / "ours", monitor=None, save_top_k=-1, every_n_train_steps=4)
    run.train(2)
    path = run.mc.format_checkpoint_name({"epoch": 1, "step": 4})
    saved_rng = load(path)["ckpthooks"]["components"]["rng"]

    class RNGProbe(pl.Callback):
        def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Any) -> None:
            self.torch_state = torch.get_rng_state()
            self.python_state = random.getstate()

    probe = RNGProbe()
    torch.manual_seed(1234)
    random.seed(1234)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t = trainer(tmp_path / "lt", 2, [CkpthooksState(), probe], enable_checkpointing=False)
        t.fit(LitNet(), datamodule=CountingData(), ckpt_path=path)
    assert torch.equal(probe.torch_state, saved_rng["torch"])
    assert list(probe.python_state[1]) == list(saved_rng["python"][1])
    [message] = interop_messages(record)
    assert "the exact data position (1 batches of epoch 1 were done" in message
    # Lightning no longer asks for the callback (only for ckpthooks' own ModelCheckpoint key)
    asking = [str(w.message) for w in record if "Please add the following callbacks" in str(w.message)]
    assert asking and not any(STATE_CALLBACK_KEY in m for m in asking)


# --------------------------------------------------------------------------- Lightning -> ckpthooks


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two epochs of a Lightning Trainer with ModelCheckpoint (top 2 by train_loss, last),
    EarlyStopping, an LR scheduler, a stateful datamodule and fp16 AMP with a GradScaler."""
    root = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(7)
    lit = LitNet(hidden=6, lr=0.2)
    dm = CountingData(seed=3)
    mc = LightningModelCheckpoint(dirpath=root / "checkpoints", monitor=MONITOR, save_top_k=2, save_last=True)
    t = trainer(root, 2, [mc, EarlyStopping(monitor=MONITOR, patience=100)])
    t.fit(lit, datamodule=dm)
    return {"root": root, "last": mc.last_model_path, "mc": mc, "trainer": t, "dm": dm}


def plain_resume(root: Path, path: str, **policy: Any) -> tuple[PlainRun, Any, list[str]]:
    run = PlainRun(root, seed=99, dm_seed=3, **policy)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        report = run.ckpt.restore(path)
    return run, report, interop_messages(record)


def test_lightning_checkpoint_resumes_a_plain_loop(lightning_run: dict[str, Any], tmp_path: Path) -> None:
    path = lightning_run["last"]
    theirs = load(path)
    run, report, messages = plain_resume(tmp_path / "ours", path, save_top_k=2)

    assert report is not None and not report.missing and not report.unexpected
    assert set(report.restored) >= {"model", "optimizers", "lr_schedulers", "scaler", "datamodule", "callbacks"}
    assert_state_equal(run.model.state_dict(), theirs["state_dict"], "weights")
    assert_state_equal(run.optimizer.state_dict()["state"], theirs["optimizer_states"][0]["state"], "optimizer")
    assert run.optimizer.param_groups[0]["lr"] == theirs["optimizer_states"][0]["param_groups"][0]["lr"]
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5**2)  # two scheduler steps
    assert run.scheduler.state_dict() == theirs["lr_schedulers"][0]
    assert run.scaler.state_dict() == theirs["MixedPrecision"]
    assert run.scaler.get_scale() != 2.0**10
    assert run.dm.state_dict() == lightning_run["dm"].state_dict() == {"loaders_made": 1, "seed": 3}
    assert (run.ckpt.current_epoch, run.ckpt.global_step) == (1, 2 * BATCHES)
    assert run.ckpt.progress.start_epoch == 2

    # the ModelCheckpoint state carries over (same monitor and mode) under Lightning's rule for a
    # changed dirpath: only best_model_path (Lightning's file) is reloaded
    lit_mc = lightning_run["mc"]
    assert len(lit_mc.best_k_models) == 2
    assert run.mc.best_k_models == {}
    assert run.mc.best_model_path == lit_mc.best_model_path
    assert run.mc.last_model_path == ""  # Lightning's last.ckpt is never overwritten

    # what does not cross over is named
    assert any("EarlyStopping" in m and "no counterpart" in m for m in messages)
    assert any("no random generator states" in m for m in messages)
    assert any("epoch 1 is finished" in m and "_batches_that_stepped" in m for m in messages)
    assert len(messages) == 3

    # and the loop goes on: one more epoch, Lightning's files stay where they are
    result = run.train(3)
    assert (result.start_epoch, result.epochs_run, result.global_step) == (2, 1, 3 * BATCHES)
    assert all(os.path.exists(p) for p in lit_mc.best_k_models)
    assert [Path(p).parent for p in run.mc.best_k_models] == [tmp_path / "ours" / "checkpoints"]


def test_the_missing_random_generator_states_of_a_lightning_file_are_named_once(
    lightning_run: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The interop warning explains them; the restore also logged "the checkpoint has no component
    'rng'", saying it twice."""
    with caplog.at_level("WARNING", logger="ckpthooks"):
        _run, _report, messages = plain_resume(tmp_path / "ours", lightning_run["last"], save_top_k=2)
    assert sum("random generator states" in m for m in messages) == 1
    assert not [r for r in caplog.records if "rng" in r.getMessage()]


def test_lightning_hyperparameters_build_the_plain_model(lightning_run: dict[str, Any]) -> None:
    path = lightning_run["last"]
    model = PlainNet.load_from_checkpoint(path)
    assert dict(model.hparams) == {"hidden": 6, "lr": 0.2}
    assert_state_equal(model.state_dict(), load(path)["state_dict"], "weights")
    assert dict(PlainNet.load_from_checkpoint(path, lr=0.01).hparams) == {"hidden": 6, "lr": 0.01}
    assert load(path)["datamodule_hyper_parameters"] == {"seed": 3}


@pytest.mark.parametrize("key", ["native_amp_scaling_state", "FSDPPrecision"])
def test_other_scaler_keys_are_understood(lightning_run: dict[str, Any], tmp_path: Path, key: str) -> None:
    """The key of Lightning before 2.0, and another precision plugin's class name."""
    checkpoint = load(lightning_run["last"])
    checkpoint[key] = checkpoint.pop("MixedPrecision")
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    run, report, _ = plain_resume(tmp_path / "ours", str(old))
    assert report is not None and "scaler" in report.restored
    assert run.scaler.state_dict() == checkpoint[key]
    assert run.scaler.get_scale() != 2.0**10


def test_a_smaller_top_k_keeps_the_best_of_lightnings_files(lightning_run: dict[str, Any], tmp_path: Path) -> None:
    # in Lightning's folder the top-k carries over (in another folder only best_model_path does,
    # as Lightning's ModelCheckpoint.load_state_dict does: see the test above)
    lit_mc = lightning_run["mc"]
    run, _, _ = plain_resume(tmp_path / "ours", lightning_run["last"], save_top_k=1, dirpath=lit_mc.dirpath)
    assert run.mc.best_k_models == pytest.approx({lit_mc.best_model_path: float(lit_mc.best_model_score)})


def test_a_model_checkpoint_without_counterpart_warns_and_starts_fresh(
    lightning_run: dict[str, Any], tmp_path: Path
) -> None:
    run, report, messages = plain_resume(tmp_path / "ours", lightning_run["last"], monitor="val_loss")
    assert report is not None and not report.missing and not report.unexpected  # strict, yet no error
    assert run.mc.best_k_models == {}
    assert any("ModelCheckpoint{'monitor': 'train_loss'" in m and "not carried over" in m for m in messages)
    assert any("monitor='val_loss'" in m and "starts fresh" in m for m in messages)


def test_lightning_mid_epoch_checkpoint_resumes_at_its_batch(tmp_path: Path) -> None:
    mc = LightningModelCheckpoint(dirpath=tmp_path / "lt", every_n_train_steps=4, save_top_k=-1)
    trainer(tmp_path / "lt-root", 2, [mc]).fit(LitNet(), datamodule=CountingData())
    path = str(tmp_path / "lt" / "epoch=1-step=4.ckpt")
    run, _, messages = plain_resume(tmp_path / "ours", path, monitor=None, save_top_k=1)
    assert (run.ckpt.current_epoch, run.ckpt.batch_idx, run.ckpt.global_step) == (1, 1, 4)
    assert not run.ckpt.progress.epoch_finished and run.ckpt.progress.start_epoch == 1
    assert any("1 batches of epoch 1 are done" in m for m in messages)
    result = run.train(2)
    assert (result.start_epoch, result.global_step) == (1, 4 + BATCHES - 1)


def test_lightning_files_written_with_ckpthooks_state_carry_the_rng(tmp_path: Path) -> None:
    mc = LightningModelCheckpoint(dirpath=tmp_path / "lt", save_top_k=-1)
    random.seed(5)
    trainer(tmp_path / "lt-root", 1, [mc, CkpthooksState()]).fit(LitNet(), datamodule=CountingData())
    saved = load(mc.best_model_path)["ckpthooks"]["components"]["rng"]
    random.seed(6)
    _, report, messages = plain_resume(tmp_path / "ours", mc.best_model_path, monitor=None, save_top_k=1)
    assert report is not None and "rng" in report.restored
    assert list(random.getstate()[1]) == list(saved["python"][1])
    assert not any("random generator" in m for m in messages)


# --------------------------------------------------------------------------- our own files


def test_our_files_restore_strictly_without_interop_warnings(our_run: PlainRun, tmp_path: Path) -> None:
    path = our_run.mc.last_model_path
    on_disk = load(path)
    lightning_key = lightning_model_checkpoint_key(our_run.mc)
    assert set(on_disk["callbacks"]) == {our_run.mc.state_key, lightning_key, STATE_CALLBACK_KEY}
    assert on_disk["ckpthooks"]["lightning"] == {"callbacks": [lightning_key, STATE_CALLBACK_KEY]}
    run, report, messages = plain_resume(tmp_path / "again", path, dirpath=Path(our_run.mc.dirpath or ""))
    assert messages == []
    assert report is not None and not report.missing and not report.unexpected
    assert run.mc.best_k_models == our_run.mc.best_k_models
    assert (run.ckpt.current_epoch, run.ckpt.global_step) == (1, 2 * BATCHES)


def test_weights_only_files_get_loops_but_no_trainer_state(tmp_path: Path) -> None:
    run = PlainRun(tmp_path, monitor=None, save_top_k=1, save_weights_only=True)
    run.train(1)
    on_disk = load(run.mc.best_model_path)
    assert on_disk["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1
    assert not {"callbacks", "optimizer_states", "lr_schedulers"} & set(on_disk)
    assert LitNet.load_from_checkpoint(run.mc.best_model_path).hparams["hidden"] == 6
