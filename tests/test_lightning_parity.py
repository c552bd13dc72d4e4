"""Lightning's checkpointing semantics in a plain loop, case by case.

Each test names the Lightning test it is ported from (in the Lightning-AI/pytorch-lightning
repository, ``tests/tests_pytorch/...``). Where ckpthooks differs on purpose, the test asserts the
documented behaviour (docs/model-checkpoint.md, "Deliberate differences").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ckpthooks import Callback, Checkpointer, ConfigurationError, HyperparametersMixin, ModelCheckpoint
from tests.helpers import TinyNet


class Counter(Callback):
    """A stateful callback: counts the training steps it saw."""

    def __init__(self, name: str = "counter") -> None:
        self.name, self.seen = name, 0

    @property
    def state_key(self) -> str:
        return f"Counter[{self.name}]"

    def on_train_batch_end(self, checkpointer: Checkpointer) -> None:
        self.seen += 1

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen = int(state_dict["seen"])


class Watcher(Callback):
    """A stateless callback (saves nothing)."""


def run(root: Path, callbacks: list[Callback], steps: int) -> Checkpointer:
    ckpt = Checkpointer(root, callbacks=callbacks, preemption_signals=None)
    ckpt.track(model=TinyNet())
    ckpt.fit_start()
    ckpt.epoch_start(0)
    for _ in ckpt.batches(range(steps)):
        pass
    return ckpt


# --------------------------------------------------------------------------- callback order


def test_checkpoint_callbacks_are_last(tmp_path: Path) -> None:
    """From trainer/connectors/test_callback_connector.py::test_checkpoint_callbacks_are_last:
    policies move to the end of the callbacks, each group in its given order."""
    first, second = ModelCheckpoint(dirpath=tmp_path, filename="a"), ModelCheckpoint(dirpath=tmp_path, monitor="m")
    counter, watcher = Counter(), Watcher()
    ckpt = Checkpointer(tmp_path, callbacks=[first, counter, watcher, second], preemption_signals=None)
    assert ckpt.callbacks == [counter, watcher, first, second]


def test_a_callback_listed_after_a_model_checkpoint_is_saved_with_the_step_it_reached(tmp_path: Path) -> None:
    """The order Lightning users write (``callbacks=[ModelCheckpoint(...), MyCallback()]``): at the
    step's save the callback has already counted that step (Lightning's ``_reorder_callbacks``)."""
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    run(tmp_path, [policy, Counter()], steps=3)
    for step in (1, 2, 3):
        saved = torch.load(tmp_path / f"step={step}.ckpt", weights_only=True)
        assert saved["callbacks"]["Counter[counter]"] == {"seen": step}, step


# --------------------------------------------------------------------------- saves inside the batch loop


def _data() -> torch.utils.data.DataLoader[Any]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(24, 4, generator=generator)
    y = torch.randn(24, 1, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=True)


def _trainer(root: Path, callbacks: list[Callback] | None = None) -> tuple[Checkpointer, torch.nn.Module, Any]:
    torch.manual_seed(0)
    model = TinyNet(dropout=0.25)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    ckpt = Checkpointer(root, callbacks=callbacks or [], preemption_signals=None, enable_checkpointing=bool(callbacks))
    ckpt.track(model=model, optimizers=optimizer)
    return ckpt, model, optimizer


def _epoch(ckpt: Checkpointer, model: torch.nn.Module, optimizer: Any, *, every: int = 0, save: str | None = None,
           stop_after: int | None = None) -> None:  # fmt: skip
    """One epoch of the common loop: a step per batch; every ``every`` batches a "validation"
    inside the loop that logs ``val_loss`` and, with ``save``, a manual save after it."""
    for i, (x, y) in enumerate(ckpt.batches(_data())):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if every and (i + 1) % every == 0:
            with torch.no_grad():
                ckpt.log("val_loss", float(torch.nn.functional.mse_loss(model(x), y)))
            ckpt.validation_end()
            if save is not None:
                ckpt.save_checkpoint(save.format(step=ckpt.global_step))
        if stop_after is not None and i + 1 == stop_after:
            return


def test_a_save_inside_the_batch_records_the_steps_done(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_every_n_train_steps and
    the val_check_interval cases: a checkpoint taken inside the batch loop, after the batch's
    optimizer step, records that step (Lightning saves it as step=2, 4, ...)."""
    ckpt, model, optimizer = _trainer(tmp_path)
    ckpt.fit_start()
    ckpt.epoch_start(0)
    _epoch(ckpt, model, optimizer, every=2, save=str(tmp_path / "mid-{step}.ckpt"))
    for step in (2, 4, 6):
        saved = torch.load(tmp_path / f"mid-{step}.ckpt", weights_only=True)
        assert saved["global_step"] == step
        assert saved["ckpthooks"]["loop"]["batch_idx"] == step
    assert ckpt.global_step == 6  # each batch counted once, at its optimizer step


def test_a_model_checkpoint_triggered_by_validation_inside_the_epoch_names_the_steps_done(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_save_last_none_monitor
    with val_check_interval: a validation inside the epoch saves at step=2, 4, 6."""
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{step}", save_top_k=-1, save_on_train_epoch_end=False)
    ckpt, model, optimizer = _trainer(tmp_path, [policy])
    ckpt.fit_start()
    ckpt.epoch_start(0)
    _epoch(ckpt, model, optimizer, every=2)
    assert sorted(p.name for p in tmp_path.glob("step=*.ckpt")) == ["step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]


def test_a_run_resumed_from_a_save_inside_the_batch_is_bit_identical(tmp_path: Path) -> None:
    """A checkpoint taken after the optimizer step of batch 3 resumes with batch 4: the rest of
    the epoch (shuffled loader, dropout) ends with the same parameters as an uninterrupted run."""
    ckpt, model, optimizer = _trainer(tmp_path / "whole")
    ckpt.fit_start()
    ckpt.epoch_start(0)
    _epoch(ckpt, model, optimizer, every=3)  # validations draw from the generator too (dropout)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    first, model, optimizer = _trainer(tmp_path / "cut")
    first.fit_start()
    first.epoch_start(0)
    _epoch(first, model, optimizer, every=3, save=str(tmp_path / "cut" / "mid.ckpt"), stop_after=3)

    resumed, model, optimizer = _trainer(tmp_path / "cut")
    resumed.restore(str(tmp_path / "cut" / "mid.ckpt"))
    assert (resumed.global_step, resumed.batch_idx) == (3, 3)
    resumed.fit_start()
    resumed.epoch_start(None)
    _epoch(resumed, model, optimizer, every=3)
    assert resumed.global_step == 6
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


# --------------------------------------------------------------------------- validation-driven triggers


def _explicit(root: Path, policy: ModelCheckpoint, epochs: int, steps: int, validate: Any) -> Checkpointer:
    """``epochs`` epochs of ``steps`` steps each; ``validate(ckpt, epoch)`` runs at every epoch's end
    and returns whether it validated (then ``validation_end()`` is called, as a Lightning
    validation loop would end)."""
    ckpt = Checkpointer(root, callbacks=[policy], preemption_signals=None, save_rng_state=False)
    ckpt.track(model=TinyNet())
    ckpt.fit_start()
    for epoch in range(epochs):
        ckpt.epoch_start(epoch)
        for _ in range(steps):
            ckpt.step_end()
        if validate(ckpt, epoch):
            ckpt.validation_end()
        ckpt.epoch_end()
    ckpt.fit_end()
    return ckpt


def test_a_step_trigger_with_a_validation_monitor_waits_for_the_validation(tmp_path: Path) -> None:
    """Lightning's ``_defer_save_until_validation`` (lightning/pytorch/callbacks/model_checkpoint.py,
    ``on_train_batch_end``): ``every_n_train_steps`` with a monitor logged only at validation saves
    at the validation that follows, with its fresh value; a value from an earlier validation never
    ranks the new checkpoint."""
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", mode="max", every_n_train_steps=5,
                             filename="{step}-{val_acc:.2f}", save_top_k=-1)  # fmt: skip
    scores = [0.5, 1.0]

    def validate(ckpt: Checkpointer, epoch: int) -> bool:
        ckpt.log("val_acc", scores[epoch])
        return True

    _explicit(tmp_path, policy, epochs=2, steps=5, validate=validate)
    assert policy.best_model_score == 1.0
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=10-val_acc=1.00.ckpt", "step=5-val_acc=0.50.ckpt"]


def test_check_val_every_n_epochs_top_k_integration(tmp_path: Path) -> None:
    """From checkpointing/test_model_checkpoint.py::test_check_val_every_n_epochs_top_k_integration:
    with validation every 2 epochs, only the epochs that validated save and rank by the monitor;
    no stale duplicate such as ``epoch=2-val_loss=0.50.ckpt`` appears."""
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", filename="{epoch}-{val_loss:.2f}", save_top_k=-1)

    def validate(ckpt: Checkpointer, epoch: int) -> bool:
        if epoch % 2 == 1:
            ckpt.log("val_loss", 1.0 / (epoch + 1))
            return True
        return False

    _explicit(tmp_path, policy, epochs=4, steps=2, validate=validate)
    saved = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert saved == ["epoch=1-val_loss=0.50.ckpt", "epoch=3-val_loss=0.25.ckpt"]


def test_a_monitor_never_logged_raises_once_validation_ran(tmp_path: Path) -> None:
    """Lightning's ``ModelCheckpoint._save_topk_checkpoint`` raises ``MisconfigurationException``
    ("could not find the monitored key") once the validation loop has run: a ``ConfigurationError``
    here, naming the metrics that were logged."""
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc")

    def validate(ckpt: Checkpointer, epoch: int) -> bool:
        ckpt.log("val_loss", 0.5)
        return True

    with pytest.raises(ConfigurationError, match=r"val_acc.*\['val_loss'\]"):
        _explicit(tmp_path, policy, epochs=1, steps=2, validate=validate)


@pytest.mark.parametrize("every_n_epochs", [0, 5])
def test_save_last_writes_last_at_the_end_of_training_without_other_triggers(
    tmp_path: Path, every_n_epochs: int
) -> None:
    """Lightning's ``ModelCheckpoint.on_train_end`` ("Ensure save_last=True is applied when training
    ends"): with ``every_n_epochs=0``, or more than the epochs run, ``last`` is written at the end."""
    policy = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=every_n_epochs)
    _explicit(tmp_path, policy, epochs=2, steps=3, validate=lambda ckpt, epoch: False)
    assert policy.last_model_path == str(tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 6
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt"]


def test_no_checkpoint_at_step_zero_from_a_validation_before_training(tmp_path: Path) -> None:
    """Lightning's ``ModelCheckpoint._last_global_step_saved = 0`` ("no need to save when no steps
    were taken"): a validation before any training step (a sanity check) saves nothing."""
    policy = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    ckpt = Checkpointer(tmp_path, callbacks=[policy], preemption_signals=None).track(model=TinyNet())
    ckpt.fit_start()
    ckpt.epoch_start(0)
    ckpt.validation_end()
    assert list(tmp_path.glob("*.ckpt")) == []
    ckpt.step_end()
    ckpt.epoch_end()
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=1.ckpt", "last.ckpt"]


# --------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    "template, metrics, kwargs, expected",
    [
        ("", {"epoch": 3, "step": 2}, {}, "epoch=3-step=2"),  # empty filename
        (None, {"epoch": 3, "step": 2}, {"prefix": "test"}, "test-epoch=3-step=2"),
        ("ckpt", {}, {"prefix": "test"}, "test-ckpt"),  # no groups
        ("{epoch:03d}-{acc}", {"epoch": 3, "acc": 0.03}, {}, "epoch=003-acc=0.03"),  # no prefix
        ("epoch={epoch:03d}-val_acc={val/acc}", {"epoch": 3, "val/acc": 0.03}, {"auto_insert_metric_name": False},
         "epoch=003-val_acc=0.03"),
        ("mAP@0.50={val/mAP@0.50:.4f}", {"val/mAP@0.50": 0.2}, {"auto_insert_metric_name": False}, "mAP@0.50=0.2000"),
    ],
    ids=["empty", "prefix", "no-groups", "no-prefix", "no-auto-insert", "dots-in-name"],
)  # fmt: skip
def test_format_checkpoint_name_classmethod(template: str | None, metrics: dict[str, float], kwargs: Any,
                                            expected: str) -> None:  # fmt: skip
    """From checkpointing/test_model_checkpoint.py::test_model_checkpoint_format_checkpoint_name."""
    assert ModelCheckpoint._format_checkpoint_name(template, metrics, **kwargs) == expected


def test_checkpoint_join_and_equals_chars_can_be_overridden_on_the_class(tmp_path: Path) -> None:
    """From test_model_checkpoint_format_checkpoint_name (``CHECKPOINT_JOIN_CHAR = "@"``): the
    characters are class attributes a subclass sets, used in names, prefixes and versions."""

    class At(ModelCheckpoint):
        CHECKPOINT_JOIN_CHAR = "@"
        CHECKPOINT_EQUALS_CHAR = "_"

    name = At._format_checkpoint_name("{epoch},{acc:.5f}", {"epoch": 3, "acc": 0.03}, prefix="test")
    assert name == "test@epoch_3,acc_0.03000"
    policy = At(dirpath=tmp_path, filename="name")
    assert policy.format_checkpoint_name({}, ver=3) == str(tmp_path / "name@v3.ckpt")
    assert At._format_checkpoint_name(None, {"epoch": 1, "step": 2}) == "epoch_1@step_2"


def test_format_checkpoint_name_takes_lightnings_arguments(tmp_path: Path) -> None:
    """From test_model_checkpoint_format_checkpoint_name: ``format_checkpoint_name(metrics,
    filename=None, ver=None, prefix="")``; without a dirpath the bare name, with "." the current
    folder resolved."""
    bare = ModelCheckpoint(monitor="m", dirpath=None).format_checkpoint_name({"epoch": 3, "step": 2})
    assert bare == "epoch=3-step=2.ckpt"
    policy = ModelCheckpoint(monitor="m", dirpath=tmp_path, filename="name")
    assert policy.format_checkpoint_name({}, ver=3) == str(tmp_path / "name-v3.ckpt")
    named = policy.format_checkpoint_name({"epoch": 1}, filename="{epoch}", prefix="p")
    assert named == str(tmp_path / "p-epoch=1.ckpt")
    here = ModelCheckpoint(monitor="m", dirpath=".").format_checkpoint_name({"epoch": 3, "step": 4})
    assert here == str(Path(".").resolve() / "epoch=3-step=4.ckpt")


def test_an_empty_dirpath_writes_into_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From test_model_checkpoint_format_checkpoint_name (``dirpath=""``): Lightning writes into the
    current folder; so does ckpthooks (the folder is resolved when the policy is made, so the name
    is absolute: a deliberate difference, docs/model-checkpoint.md)."""
    monkeypatch.chdir(tmp_path)
    policy = ModelCheckpoint(monitor="m", dirpath="")
    assert policy.format_checkpoint_name({"epoch": 5, "step": 4}) == str(tmp_path / "epoch=5-step=4.ckpt")
    ckpt = Checkpointer(tmp_path / "root", callbacks=[ModelCheckpoint(dirpath="")], preemption_signals=None)
    ckpt.track(model=TinyNet()).fit(lambda epoch: list(ckpt.batches(range(2))), max_epochs=1)
    assert (tmp_path / "epoch=0-step=2.ckpt").is_file()


def test_slashes_in_metric_names_never_create_folders() -> None:
    """From test_model_checkpoint_format_checkpoint_name ("using slashes"): Lightning writes
    ``epoch=4_val/loss=0.03000.ckpt`` (a folder ``epoch=4_val``); ckpthooks replaces the separator,
    a deliberate difference (docs/model-checkpoint.md)."""
    policy = ModelCheckpoint(monitor="m", dirpath=None, filename="{epoch}_{val/loss:.5f}")
    assert policy.format_checkpoint_name({"epoch": 4, "val/loss": 0.03}) == "epoch=4_val_loss=0.03000.ckpt"


def test_model_checkpoint_file_extension(tmp_path: Path) -> None:
    """From test_model_checkpoint.py::test_model_checkpoint_file_extension."""

    class Tpkc(ModelCheckpoint):
        FILE_EXTENSION = ".tpkc"

    policy = Tpkc(dirpath=tmp_path, save_top_k=1, save_last=True)
    ckpt = Checkpointer(tmp_path, callbacks=[policy], preemption_signals=None)
    ckpt.track(model=TinyNet()).fit(lambda epoch: list(ckpt.batches(range(1))), max_epochs=1)
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".json") and not p.name.startswith("."))
    assert written == ["epoch=0-step=1.tpkc", "last.tpkc"]


# --------------------------------------------------------------------------- the explicit-calls form


def test_step_end_inside_a_batches_loop_raises_instead_of_counting_twice(tmp_path: Path) -> None:
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, preemption_signals=None).track(model=TinyNet())
    ckpt.fit_start()
    ckpt.epoch_start(0)
    with pytest.raises(ConfigurationError, match="count twice"):
        for _ in ckpt.batches(range(3)):
            ckpt.step_end()
    assert ckpt.global_step == 0
    for _ in ckpt.batches(range(3)):  # the loop is usable again
        pass
    assert ckpt.global_step == 3


def test_the_explicit_example_of_the_getting_started_page_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/getting-started.md's explicit-calls example, run whole, then cut after a mid-epoch
    checkpoint and resumed: the same parameters at the end (a shuffled loader)."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "getting-started.md").read_text()
    section = text.split("## The explicit-call form", 1)[1]
    example = re.findall(r"```python\n(.*?)```", section, re.DOTALL)[0]
    steps = "ModelCheckpoint(every_n_train_steps=3, save_top_k=-1, dirpath='runs/explicit/steps', filename='{step}')"
    example = example.replace("callbacks=[best]", f"callbacks=[best, {steps}]")
    resumed_from: list[str | None] = []

    def run(folder: str, stop_at: int | None) -> dict[str, torch.Tensor]:
        monkeypatch.chdir(tmp_path)
        code = example.replace("runs/explicit", folder)
        if stop_at is not None:  # a kill after step ``stop_at``: the loop stops right there
            stop = f"optimizer.step()\n        if ckpt.global_step == {stop_at}: raise SystemExit"
            code = code.replace("optimizer.step()", stop)
        torch.manual_seed(0)
        namespace: dict[str, Any] = {}
        try:
            exec(compile(code, "getting-started.md", "exec"), namespace)
        except SystemExit:
            namespace["ckpt"].close()
        resumed_from.append(namespace["ckpt"].resumed_from)
        return {k: v.clone() for k, v in namespace["model"].state_dict().items()}

    whole = run("runs/whole", None)
    run("runs/cut", 13)  # epoch 1, batch 3: after the step-12 checkpoint
    resumed = run("runs/cut", None)
    assert resumed_from[-1] == str(tmp_path / "runs" / "cut" / "steps" / "step=12.ckpt")
    for key, value in whole.items():
        assert torch.equal(value, resumed[key]), key


# --------------------------------------------------------------------------- several policies


def test_model_checkpoints_that_differ_by_trigger_work_side_by_side(tmp_path: Path) -> None:
    """Lightning documents several ModelCheckpoints, one per trigger (its ``state_key`` embeds the
    triggers; from checkpointing/test_model_checkpoint.py::test_model_checkpoint_state_key): an
    every-N-steps and an every-epoch policy into the same folder keep their own state."""
    steps = ModelCheckpoint(dirpath=tmp_path, filename="s-{step}", every_n_train_steps=2, save_top_k=-1)
    epochs = ModelCheckpoint(dirpath=tmp_path, filename="e-{epoch}", save_top_k=-1)
    assert steps.state_key != epochs.state_key
    ckpt = Checkpointer(tmp_path, callbacks=[steps, epochs], preemption_signals=None).track(model=TinyNet())
    ckpt.fit(lambda epoch: list(ckpt.batches(range(3))), max_epochs=2)
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["e-epoch=0.ckpt", "e-epoch=1.ckpt", "s-step=2.ckpt", "s-step=4.ckpt", "s-step=6.ckpt"]
    saved = torch.load(tmp_path / "e-epoch=1.ckpt", weights_only=True)["callbacks"]
    assert {steps.state_key, epochs.state_key} <= set(saved)


def test_the_state_key_stays_when_an_interval_changes_and_old_keys_are_read(tmp_path: Path) -> None:
    """The key holds the trigger's kind, not its interval: changing ``every_n_train_steps``
    between runs keeps the policy's state; a step policy's state saved under the key without the
    trigger (the layout before) is read into it."""
    assert (ModelCheckpoint(monitor="m", every_n_train_steps=5).state_key
            == ModelCheckpoint(monitor="m", every_n_train_steps=50, save_top_k=3).state_key)  # fmt: skip
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="loss", every_n_train_steps=1, save_top_k=2)
    ckpt = Checkpointer(tmp_path, callbacks=[policy], preemption_signals=None).track(model=TinyNet())
    ckpt.fit_start()
    ckpt.epoch_start(0)
    for loss in (3.0, 1.0):
        ckpt.log("loss", loss)
        ckpt.step_end()
    ckpt.close()
    path = Path(policy.best_model_path)
    checkpoint = torch.load(path, weights_only=True)
    old_key = policy.state_key_aliases()[0]
    checkpoint["callbacks"][old_key] = checkpoint["callbacks"].pop(policy.state_key)
    torch.save(checkpoint, tmp_path / "old-layout.ckpt")

    again = ModelCheckpoint(dirpath=tmp_path, monitor="loss", every_n_train_steps=1, save_top_k=2)
    resumed = Checkpointer(tmp_path, callbacks=[again], preemption_signals=None).track(model=TinyNet())
    resumed.restore(str(tmp_path / "old-layout.ckpt"))
    assert again.best_model_score == 1.0 and again.best_model_path == str(path)


# --------------------------------------------------------------------------- load_from_checkpoint


class DataModule(HyperparametersMixin):
    """A datamodule with saved init arguments and a state of its own."""

    def __init__(self, batch_size: int = 8, root: str = "data") -> None:
        self.save_hyperparameters()
        self.batches_served = 0

    def state_dict(self) -> dict[str, Any]:
        return {"batches_served": self.batches_served}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches_served = int(state_dict["batches_served"])


def _saved_with_datamodule(tmp_path: Path) -> Path:
    dm = DataModule(batch_size=32, root="elsewhere")
    dm.batches_served = 7
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False, preemption_signals=None)
    ckpt.track(model=TinyNet(hidden=16), datamodule=dm)
    ckpt.save_checkpoint(tmp_path / "dm.ckpt")
    return tmp_path / "dm.ckpt"


def test_a_datamodule_loads_its_own_hyperparameters_and_state(tmp_path: Path) -> None:
    """From core/test_datamodules.py::test_dm_checkpoint_save_and_load and
    models/test_hparams.py's datamodule cases: ``DataModule.load_from_checkpoint`` reads
    ``datamodule_hyper_parameters`` and the datamodule's state (under its class name), not the
    model's hyperparameters and weights."""
    path = _saved_with_datamodule(tmp_path)
    saved = torch.load(path, weights_only=True)
    assert saved["datamodule_hyper_parameters"] == {"batch_size": 32, "root": "elsewhere"}
    dm = DataModule.load_from_checkpoint(path)
    assert (dm.hparams.batch_size, dm.hparams.root, dm.batches_served) == (32, "elsewhere", 7)
    assert DataModule.load_from_checkpoint(path, batch_size=64).hparams.batch_size == 64
    assert TinyNet.load_from_checkpoint(path).hparams.hidden == 16  # the model's, as before


def test_an_override_naming_no_init_argument_warns(tmp_path: Path) -> None:
    path = _saved_with_datamodule(tmp_path)
    with pytest.warns(UserWarning, match=r"'batchsize' is not an argument of DataModule.__init__"):
        dm = DataModule.load_from_checkpoint(path, batchsize=64)
    assert dm.hparams.batch_size == 32
