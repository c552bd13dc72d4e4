"""Lightning's checkpointing semantics in a plain loop, case by case.

Each test names the Lightning test it is ported from (in the Lightning-AI/pytorch-lightning
repository, ``tests/tests_pytorch/...``). Where ckpthooks differs on purpose, the test asserts the
documented behaviour (docs/model-checkpoint.md, "Deliberate differences").
"""

from __future__ import annotations

import warnings
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
    """From checkpointing/test_model_checkpoint.py::test_ckpt_every_n_train_steps and
    test_val_check_interval_checkpoint_files: a checkpoint taken inside the batch loop, after the batch's
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
    """From checkpointing/test_model_checkpoint.py::test_val_check_interval_checkpoint_files: a
    validation inside the epoch saves at step=2, 4, 6."""
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


class Events(Callback):
    """A stateful record of the loop events it saw (batch ends by step, validation ends)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_train_batch_end(self, checkpointer: Checkpointer) -> None:
        self.seen.append(f"batch_end {checkpointer.global_step}")

    def on_validation_end(self, checkpointer: Checkpointer) -> None:
        self.seen.append(f"validation_end {checkpointer.global_step}")

    def state_dict(self) -> dict[str, Any]:
        return {"seen": list(self.seen)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen = list(state_dict["seen"])


def _events_run(root: Path, stop_after: int | None = None, ckpt_path: str | None = None) -> tuple[Events, set[str]]:
    """One epoch of 6 batches with a validation after batch 2 (a monitor policy saves there, inside
    the batch) and a step policy every 2 steps; ``stop_after`` batches, then the process "dies"."""
    events = Events()
    best = ModelCheckpoint(dirpath=root / "best", monitor="val_loss", filename="{step}", save_last=True)
    steps = ModelCheckpoint(dirpath=root / "steps", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    ckpt, model, optimizer = _trainer(root, [events, best, steps])
    ckpt.restore(ckpt_path)
    ckpt.fit_start()
    ckpt.epoch_start(None)
    for i, (x, y) in enumerate(ckpt.batches(_data()), start=ckpt.batch_idx):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        if i == 1:
            ckpt.log("val_loss", 0.5)
            ckpt.validation_end()
        if stop_after is not None and i + 1 == stop_after:
            return events, set()
    ckpt.epoch_end()
    ckpt.fit_end()
    return events, {p.name for p in (root / "steps").glob("*.ckpt")}


def test_a_resume_from_a_save_inside_the_batch_runs_that_batch_end_events(tmp_path: Path) -> None:
    """Regression: a checkpoint taken inside batch 2's body (the validation save) holds the batch
    as done, its end events not yet run: the resumed run runs them first, so a stateful callback
    sees every batch end once and the step policy's save at step 2 happens, as uninterrupted."""
    expected, expected_files = _events_run(tmp_path / "whole")
    assert expected_files == {"step=2.ckpt", "step=4.ckpt", "step=6.ckpt"}
    _events_run(tmp_path / "cut", stop_after=2)  # dies inside batch 2, after the validation's save
    got, files = _events_run(tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "best" / "step=2.ckpt"))
    assert got.seen == expected.seen
    assert files == expected_files


def test_a_resume_after_the_epochs_validation_does_not_validate_the_epoch_again(tmp_path: Path) -> None:
    """Regression: resumed after the epoch's validation (from the step-4 file), ``epoch_end()`` does
    not stand in for a validation that already ran: no second validation end, no extra ``last``."""
    expected, _ = _events_run(tmp_path / "whole")
    assert [e for e in expected.seen if e.startswith("validation_end")] == ["validation_end 2"]
    _events_run(tmp_path / "cut", stop_after=5)
    got, _ = _events_run(tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "steps" / "step=4.ckpt"))
    assert got.seen == expected.seen
    last = torch.load(tmp_path / "cut" / "best" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2


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


def test_a_save_deferred_until_validation_survives_a_resume(tmp_path: Path) -> None:
    """Regression: a step-triggered save waiting for the validation's monitor value (step 2) still
    happens at that validation (step 3) in a run resumed in between, as uninterrupted; and ``last``
    is not written again at the end of a resumed run when the uninterrupted one would not."""

    def run(root: Path, ckpt_path: str | None = None, stop_at: int | None = None) -> set[str]:
        waiting = ModelCheckpoint(dirpath=root / "val", monitor="val_loss", every_n_train_steps=2,
                                  filename="{step}", save_top_k=-1, save_last=True)  # fmt: skip
        steps = ModelCheckpoint(dirpath=root / "steps", filename="{step}", every_n_train_steps=2, save_top_k=-1)
        ckpt = Checkpointer(root, callbacks=[waiting, steps], preemption_signals=None).track(model=TinyNet())
        ckpt.restore(ckpt_path)
        ckpt.fit_start()
        ckpt.epoch_start(None)
        for _ in range(ckpt.batch_idx, 3):
            ckpt.step_end()
            if ckpt.global_step == stop_at:
                return set()
        ckpt.log("val_loss", 0.5)
        ckpt.validation_end()
        ckpt.epoch_end()
        ckpt.fit_end()
        return {p.name for p in (root / "val").glob("*.ckpt")}

    assert run(tmp_path / "whole") == {"step=3.ckpt", "last.ckpt"}
    run(tmp_path / "cut", stop_at=2)
    assert run(tmp_path / "cut", ckpt_path=str(tmp_path / "cut" / "steps" / "step=2.ckpt")) == {
        "step=3.ckpt", "last.ckpt"
    }
    for root in ("whole", "cut"):
        assert torch.load(tmp_path / root / "val" / "last.ckpt", weights_only=True)["global_step"] == 3


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
    """test_save_last_every_n_epochs_interaction, and Lightning's ``ModelCheckpoint.on_train_end``
    ("Ensure save_last=True is applied when training ends"): with ``every_n_epochs=0``, or more
    than the epochs run, ``last`` is written at the end."""
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
    """ckpthooks' own API (Lightning's loop ends every batch itself, so it has no such case):
    ``step_end()`` inside ``ckpt.batches()`` would count each step twice, and raises."""
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
    """Lightning's ``_load_state`` (core/saving.py) drops an override naming no ``__init__``
    argument silently; ckpthooks drops it with a warning (a deliberate difference)."""
    path = _saved_with_datamodule(tmp_path)
    with pytest.warns(UserWarning, match=r"'batchsize' is not an argument of DataModule.__init__"):
        dm = DataModule.load_from_checkpoint(path, batchsize=64)
    assert dm.hparams.batch_size == 32


# --------------------------------------------------------------------------- more of test_model_checkpoint.py
#
# Each test below names the case of Lightning's tests/tests_pytorch/checkpointing/
# test_model_checkpoint.py it ports. ``_fit`` stands in for ``Trainer.fit`` with ``limit_train_batches``:
# ``epochs`` epochs of ``batches`` steps, metrics logged per step by ``log`` (as ``self.log`` in
# ``training_step``), and, where ``validate`` says so, a validation at the epoch's end.


def _policy_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.suffix == ".ckpt"} if folder.exists() else set()


def _fit(root: Path, callbacks: list[Callback], epochs: int, batches: int, *, ckpt_path: str | None = None,
         log: Any = None, validate: Any = None) -> Checkpointer:  # fmt: skip
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = Checkpointer(root, callbacks=callbacks, preemption_signals=None)
    ckpt.track(model=model, optimizers=optimizer)

    @ckpt.loop(max_epochs=epochs, ckpt_path=ckpt_path)
    def epoch(epoch: int) -> None:
        for _ in ckpt.batches(range(batches)):
            if log is not None:
                ckpt.log_dict(log(ckpt))
        if validate is not None and validate(ckpt):
            ckpt.validation_end()

    epoch()
    return ckpt


@pytest.mark.parametrize("same_resume_folder", [True, False])
def test_resume_and_old_checkpoint_files_remain(tmp_path: Path, same_resume_folder: bool) -> None:
    """test_resume_and_old_checkpoint_files_remain: resumed in the same folder, the file the run
    resumed from survives top-k pruning; resumed into another folder, the first folder is not
    touched and the new one holds the new files only. Also a regression test for a monitor on
    ``step``, which waited for a validation that never logs it."""
    first, second = tmp_path / "first", tmp_path / "second"

    def policy(folder: Path) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=folder, monitor="step", mode="max", save_top_k=2, every_n_train_steps=2)

    # Lightning's max_steps=5, then 8, in an epoch of 10: epochs of 5, then 8 batches here
    _fit(tmp_path, [policy(first)], epochs=1, batches=5)
    assert _policy_files(first) == {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"}
    new = first if same_resume_folder else second
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _fit(tmp_path, [policy(new)], epochs=1, batches=8, ckpt_path=str(first / "epoch=0-step=4.ckpt"))
    if same_resume_folder:
        assert _policy_files(first) == {"epoch=0-step=4.ckpt", "epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt"}
        assert not [w for w in record if "dirpath has changed" in str(w.message)]
    else:
        assert _policy_files(first) == {"epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"}
        assert _policy_files(second) == {"epoch=0-step=6.ckpt", "epoch=0-step=8.ckpt"}
        assert [w for w in record if "dirpath has changed" in str(w.message)]


def test_resume_training_preserves_old_ckpt_last(tmp_path: Path) -> None:
    """test_resume_training_preserves_old_ckpt_last: resumed into a new folder, the old folder's
    ``last`` file stays, through two more epochs."""
    options: dict[str, Any] = {"filename": "{step}", "monitor": "step", "mode": "max", "save_last": True,
                               "save_top_k": 2, "every_n_train_steps": 1}  # fmt: skip
    _fit(tmp_path, [ModelCheckpoint(**options)], epochs=1, batches=3)
    assert _policy_files(tmp_path / "checkpoints") == {"last.ckpt", "step=2.ckpt", "step=3.ckpt"}
    resumed = ModelCheckpoint(dirpath=tmp_path / "new", **options)
    with pytest.warns(UserWarning, match="dirpath has changed"):
        _fit(tmp_path, [resumed], epochs=2, batches=3, ckpt_path=str(tmp_path / "checkpoints" / "step=2.ckpt"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert _policy_files(tmp_path / "new") == {"last.ckpt", "step=5.ckpt", "step=6.ckpt"}


def test_model_checkpoint_saveload_ckpt(tmp_path: Path) -> None:
    """test_model_checkpoint_saveload_ckpt: ``state_dict`` holds Lightning's keys; loaded by a
    policy with another ``dirpath``, it warns and reloads only ``best_model_path`` (the old
    folder's file), not ``best_model_score``, ``kth_*``, ``best_k_models`` or ``last_model_path``.
    ckpthooks keeps the paths relative to ``dirpath`` in the state (a moved run folder resumes)."""
    writer = ModelCheckpoint(dirpath=tmp_path / "run", monitor="loss", save_top_k=-1, save_last=True)
    _fit(tmp_path, [writer], epochs=2, batches=1, log=lambda ckpt: {"loss": 10.0 - ckpt.global_step})
    written = writer.state_dict()
    assert {"best_model_path", "best_model_score", "best_k_models", "kth_best_model_path", "kth_value",
            "last_model_path", "dirpath", "monitor", "current_score"} <= set(written)  # fmt: skip
    # logged inside the batch, before it counts: 10 - 0, then 10 - 1
    assert written["best_model_path"] == "epoch=1-step=2.ckpt" and written["best_model_score"] == 9.0
    restored = ModelCheckpoint(dirpath=tmp_path / "restore", monitor="loss", save_top_k=-1, save_last=True)
    with pytest.warns(UserWarning, match="The dirpath has changed from"):
        restored.load_state_dict(written)
    assert restored.best_model_path == writer.best_model_path == str(tmp_path / "run" / "epoch=1-step=2.ckpt")
    assert restored.best_model_score is None and restored.best_k_models == {}
    assert restored.kth_best_model_path == "" and restored.kth_value is None
    assert restored.last_model_path == "" and restored.current_score is None
    same = ModelCheckpoint(dirpath=tmp_path / "run", monitor="loss", save_top_k=-1, save_last=True)
    same.load_state_dict(written)
    assert same.best_k_models == writer.best_k_models and same.last_model_path == writer.last_model_path


def test_a_moved_run_folder_keeps_its_model_checkpoint_state(tmp_path: Path) -> None:
    """The ckpthooks side of test_model_checkpoint_saveload_ckpt: a run folder moved (or copied with
    ``ckpthooks copy``) as a whole still holds the files the state names, so the state applies."""
    writer = ModelCheckpoint(monitor="loss", save_top_k=2)
    _fit(tmp_path / "a", [writer], epochs=3, batches=1, log=lambda ckpt: {"loss": 10.0 - ckpt.global_step})
    (tmp_path / "a").rename(tmp_path / "b")
    moved = ModelCheckpoint(monitor="loss", save_top_k=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(tmp_path / "b", [moved], epochs=3, batches=1, ckpt_path="last")
    assert set(moved.best_k_models) == {str(tmp_path / "b" / "checkpoints" / f"epoch={e}-step={e + 1}.ckpt")
                                        for e in (1, 2)}  # fmt: skip


def test_pickling(tmp_path: Path) -> None:
    """test_pickling: a ModelCheckpoint pickles and unpickles to the same attributes (its lock is
    new; a policy attached to a checkpointer unpickles detached)."""
    import pickle

    policy = ModelCheckpoint(dirpath=tmp_path)
    copy = pickle.loads(pickle.dumps(policy))
    assert {k: v for k, v in vars(copy).items() if k != "_lock"} == {
        k: v for k, v in vars(policy).items() if k != "_lock"
    }
    attached = ModelCheckpoint(monitor="loss")
    _fit(tmp_path / "run", [attached], epochs=1, batches=2, log=lambda ckpt: {"loss": 1.0})
    detached = pickle.loads(pickle.dumps(attached))
    assert detached.best_k_models == attached.best_k_models and detached._checkpointer is None


@pytest.mark.parametrize("save_top_k", [-1, 0, 1, 2])
def test_model_checkpoint_to_yaml(tmp_path: Path, save_top_k: int) -> None:
    """test_model_checkpoint_to_yaml: ``to_yaml()`` writes ``best_k_models`` to
    ``best_k_models.yaml`` in ``dirpath``; a YAML reader loads the same mapping."""
    yaml = pytest.importorskip("yaml")
    policy = ModelCheckpoint(dirpath=tmp_path, monitor="early_stop_on", save_top_k=save_top_k)
    _fit(tmp_path, [policy], epochs=2, batches=2,
         log=lambda ckpt: {"early_stop_on": [0.5, 1.5e-7, 3.0, 2.0][ckpt.global_step - 1]})  # fmt: skip
    policy.to_yaml()
    loaded = yaml.safe_load((tmp_path / "best_k_models.yaml").read_text())
    assert loaded == policy.best_k_models
    assert len(loaded) == {-1: 2, 0: 0, 1: 1, 2: 2}[save_top_k]
    policy.to_yaml(tmp_path / "elsewhere" / "k.yaml")
    assert yaml.safe_load((tmp_path / "elsewhere" / "k.yaml").read_text()) == loaded


def test_save_last_saves_correct_last_model_path(tmp_path: Path) -> None:
    """test_save_last_saves_correct_last_model_path: ``CHECKPOINT_NAME_LAST = "{foo}-last"`` names
    ``last`` with a logged metric; the file's own state names it (relative to ``dirpath`` in
    ckpthooks)."""

    class FooLast(ModelCheckpoint):
        CHECKPOINT_NAME_LAST = "{foo}-last"

    policy = FooLast(dirpath=tmp_path, save_last=True, save_top_k=0)
    # logged values are floats, as Lightning's ``self.log`` makes them (its test passes an int tensor)
    _fit(tmp_path, [policy], epochs=1, batches=1, log=lambda ckpt: {"foo": 1})
    assert _policy_files(tmp_path) == {"foo=1.0-last.ckpt"}
    assert policy.last_model_path == str(tmp_path / "foo=1.0-last.ckpt")
    saved = torch.load(tmp_path / "foo=1.0-last.ckpt", weights_only=True)
    assert saved["callbacks"][policy.state_key]["last_model_path"] == "foo=1.0-last.ckpt"


def test_save_last_versioning(tmp_path: Path) -> None:
    """test_save_last_versioning: a second run into the same folder writes ``last-v1``; no file is
    a link (``save_top_k=0`` saved nothing to link to)."""
    for _ in range(2):
        _fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True)], epochs=2, batches=1)
    assert _policy_files(tmp_path) == {"last.ckpt", "last-v1.ckpt"}
    assert not any((tmp_path / name).is_symlink() for name in _policy_files(tmp_path))


def test_none_monitor_saves_correct_best_model_path(tmp_path: Path) -> None:
    """test_none_monitor_saves_correct_best_model_path: without a monitor, the file saved is
    ``best_model_path``, and its own state says so."""
    policy = ModelCheckpoint(dirpath=tmp_path, monitor=None)
    _fit(tmp_path, [policy], epochs=1, batches=1)
    assert _policy_files(tmp_path) == {"epoch=0-step=1.ckpt"}
    assert policy.best_model_path == str(tmp_path / "epoch=0-step=1.ckpt")
    saved = torch.load(tmp_path / "epoch=0-step=1.ckpt", weights_only=True)
    assert saved["callbacks"][policy.state_key]["best_model_path"] == "epoch=0-step=1.ckpt"


def test_last_global_step_saved(tmp_path: Path) -> None:
    """test_last_global_step_saved: ``save_top_k=0`` and ``save_last=False`` save nothing (the
    Lightning test checks the private counter of saves; here, what a user sees: no file)."""
    policy = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=False, monitor="foo")
    _fit(tmp_path, [policy], epochs=2, batches=2, log=lambda ckpt: {"foo": 123.0})
    assert _policy_files(tmp_path) == set()
    assert policy.best_model_path == "" and policy.last_model_path == ""


def test_ckpt_version_counter_disabled_after_rerun_new_trainer(tmp_path: Path) -> None:
    """test_ckpt_version_counter_disabled_after_rerun_new_trainer: with
    ``enable_version_counter=False`` a second run overwrites the first run's files, ``last``
    included, and adds no suffix. (Regression: the files of an earlier run raised.)"""
    for _ in range(2):
        policy = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, save_last=True, monitor="epoch", mode="max",
                                 filename="{epoch}", enable_version_counter=False)  # fmt: skip
        ckpt = _fit(tmp_path, [policy], epochs=2, batches=1)
        assert {Path(p).name for p in policy.best_k_models} == {"epoch=0.ckpt", "epoch=1.ckpt"}
        assert Path(policy.last_model_path).name == "last.ckpt"
        assert ckpt.resumed_from is None
    assert _policy_files(tmp_path) == {"epoch=0.ckpt", "epoch=1.ckpt", "last.ckpt"}


def test_expand_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """test_expand_home: ``~`` in ``dirpath`` is the home folder; ``./~`` is a folder named ``~``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert ModelCheckpoint(dirpath="~/checkpoints").dirpath == str(tmp_path / "home" / "checkpoints")
    assert ModelCheckpoint(dirpath=Path("~/checkpoints")).dirpath == str(tmp_path / "home" / "checkpoints")
    assert ModelCheckpoint(dirpath="./~/checkpoints").dirpath == str(tmp_path / "~" / "checkpoints")


def test_checkpoint_repeated_strategy(tmp_path: Path) -> None:
    """test_checkpoint_repeated_strategy: fitting again from the best checkpoint of a finished run
    (nothing left to train) writes no new file, however often."""
    policy = ModelCheckpoint(monitor="val_loss", dirpath=tmp_path, filename="{epoch:02d}")

    def validate(ckpt: Checkpointer) -> bool:
        ckpt.log("val_loss", 0.5)
        return True

    _fit(tmp_path, [policy], epochs=1, batches=2, validate=validate)
    assert _policy_files(tmp_path) == {"epoch=00.ckpt"}
    for _ in range(4):
        again = ModelCheckpoint(monitor="val_loss", dirpath=tmp_path, filename="{epoch:02d}")
        ckpt = _fit(tmp_path, [again], epochs=1, batches=2, validate=validate, ckpt_path=policy.best_model_path)
        assert ckpt.global_step == 2
        assert _policy_files(tmp_path) == {"epoch=00.ckpt"}


def test_ckpt_metric_names(tmp_path: Path) -> None:
    """test_ckpt_metric_names: a metric in ``filename`` puts its name and value in the file name."""
    policy = ModelCheckpoint(monitor="early_stop_on", dirpath=tmp_path, filename="{val_loss:.2f}")
    _fit(tmp_path, [policy], epochs=1, batches=2, log=lambda ckpt: {"early_stop_on": 1.0, "val_loss": 0.123})
    names = [n for n in _policy_files(tmp_path) if "val_loss" in n]
    assert names == ["val_loss=0.12.ckpt"]


@pytest.mark.parametrize("save_top_k", [-1, 0, 1, 2])
def test_model_checkpoint_with_non_string_input(tmp_path: Path, save_top_k: int) -> None:
    """test_model_checkpoint_with_non_string_input: ``dirpath=None`` is valid; the folder is under
    the run's root (Lightning: the logger's version folder; ckpthooks has no logger, so
    ``default_root_dir/checkpoints``)."""
    policy = ModelCheckpoint(monitor="early_stop_on", dirpath=None, filename="{epoch}", save_top_k=save_top_k)
    _fit(tmp_path, [policy], epochs=2, batches=1, log=lambda ckpt: {"early_stop_on": 3.0 - ckpt.global_step})
    assert policy.dirpath == str(tmp_path / "checkpoints")
    if save_top_k == -1:
        assert _policy_files(tmp_path / "checkpoints") == {"epoch=0.ckpt", "epoch=1.ckpt"}


def _with_step_lr(root: Path, policy: ModelCheckpoint) -> tuple[Checkpointer, Any, Any]:
    """A checkpointer tracking a model, SGD (lr 0.1) and a StepLR doubling the rate every step."""
    ckpt = Checkpointer(root, callbacks=[policy], preemption_signals=None)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=2)
    ckpt.track(model=model, optimizers=optimizer, lr_schedulers=scheduler)
    return ckpt, optimizer, scheduler


def test_model_checkpoint_score_and_ckpt_val_check_interval(tmp_path: Path) -> None:
    """test_model_checkpoint_score_and_ckpt_val_check_interval (``val_check_interval=0.25``, 12
    batches, 3 epochs): a validation every 3 batches saves a file named by its score, holding the
    steps done, the epoch, and the score as ``current_score``; the LR scheduler's state is the one
    at the save (stepped at each epoch's end, after the epoch's last validation)."""
    torch.manual_seed(0)
    val_logs = torch.randn(12).tolist()
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{val_log:.4f}-{epoch}", monitor="val_log", save_top_k=-1)
    ckpt, optimizer, scheduler = _with_step_lr(tmp_path, policy)
    validations = 0

    @ckpt.loop(max_epochs=3)
    def epoch(epoch: int) -> None:
        nonlocal validations
        for i, _ in enumerate(ckpt.batches(range(12))):
            optimizer.step()
            if (i + 1) % 3 == 0:
                ckpt.log("val_log", val_logs[validations])
                validations += 1
                ckpt.validation_end()
        scheduler.step()

    epoch()
    assert len(_policy_files(tmp_path)) == 12
    for index, score in enumerate(val_logs):
        epoch_index = index // 4
        saved = torch.load(tmp_path / f"val_log={score:.4f}-epoch={epoch_index}.ckpt", weights_only=True)
        assert saved["epoch"] == epoch_index
        assert saved["global_step"] == 3 * (index + 1)
        state = saved["callbacks"][policy.state_key]
        assert state["monitor"] == "val_log" and state["current_score"] == pytest.approx(score)
        assert saved["lr_schedulers"][0]["_step_count"] == epoch_index + 1
        assert saved["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.1 * 2**epoch_index)


def test_model_checkpoint_score_and_ckpt_with_a_scheduler(tmp_path: Path) -> None:
    """test_model_checkpoint_score_and_ckpt (StepLR): an epoch-end checkpoint holds the scheduler
    state after that epoch's step (``_step_count == epoch + 2``, ``lr * gamma ** (epoch + 1)``)."""
    policy = ModelCheckpoint(dirpath=tmp_path, filename="{train_log:.4f}-{epoch}", monitor="train_log", save_top_k=-1)
    ckpt, optimizer, scheduler = _with_step_lr(tmp_path, policy)
    scores = [0.3, 0.1, 0.2]

    @ckpt.loop(max_epochs=3)
    def epoch(epoch: int) -> None:
        for _ in ckpt.batches(range(5)):
            optimizer.step()
        ckpt.log("train_log", scores[epoch])
        scheduler.step()

    epoch()
    for index, score in enumerate(scores):
        saved = torch.load(tmp_path / f"train_log={score:.4f}-epoch={index}.ckpt", weights_only=True)
        assert (saved["epoch"], saved["global_step"]) == (index, 5 * (index + 1))
        assert saved["lr_schedulers"][0]["_step_count"] == index + 2
        assert saved["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.1 * 2 ** (index + 1))


# --------------------------------------------------------------------------- save_on_exception


class Trouble(Callback):
    """Raises ``RuntimeError("Trouble!")`` at one event (Lightning's ``TroubledCallback*`` classes)."""

    def __init__(self, event: str) -> None:
        self.event = event

    def _maybe(self, checkpointer: Checkpointer, event: str) -> None:
        if event == self.event and (event == "on_fit_end" or checkpointer.current_epoch == 1):
            raise RuntimeError("Trouble!")

    def on_train_epoch_start(self, checkpointer: Checkpointer) -> None:
        self._maybe(checkpointer, "on_train_epoch_start")

    def on_train_batch_end(self, checkpointer: Checkpointer) -> None:
        self._maybe(checkpointer, "on_train_batch_end")

    def on_train_epoch_end(self, checkpointer: Checkpointer) -> None:
        self._maybe(checkpointer, "on_train_epoch_end")

    def on_validation_end(self, checkpointer: Checkpointer) -> None:
        self._maybe(checkpointer, "on_validation_end")

    def on_fit_end(self, checkpointer: Checkpointer) -> None:
        self._maybe(checkpointer, "on_fit_end")


def _troubled_fit(root: Path, callbacks: list[Callback], *, in_step: bool = False) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = Checkpointer(root, callbacks=callbacks, preemption_signals=None).track(model=model, optimizers=optimizer)

    @ckpt.loop(max_epochs=4)
    def epoch(epoch: int) -> None:
        for i, _ in enumerate(ckpt.batches(range(2))):
            if in_step and epoch == 1 and i == 1:
                raise RuntimeError("Trouble!")  # Lightning's TroubledModelInTrainingStep
            optimizer.zero_grad()
            model(torch.ones(1, 4)).sum().backward()
            optimizer.step()
        ckpt.log("val_loss", 1.0)
        ckpt.validation_end()

    with pytest.raises(RuntimeError, match="Trouble!"):
        epoch()


@pytest.mark.parametrize(
    "event", ["training_step", "on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end",
              "on_validation_end", "on_fit_end"],
)  # fmt: skip
def test_model_checkpoint_on_exception_parametrized(tmp_path: Path, event: str) -> None:
    """test_model_checkpoint_on_exception_parametrized and
    test_model_checkpoint_on_exception_in_other_callbacks: with ``save_on_exception=True`` an
    exception in the loop body or in another callback leaves
    ``exception.ckpt`` with the model's state and the steps done, and the exception goes on."""
    policy = ModelCheckpoint(dirpath=tmp_path, filename="exception", save_on_exception=True, every_n_epochs=7)
    callbacks: list[Callback] = [policy] if event == "training_step" else [policy, Trouble(event)]
    _troubled_fit(tmp_path, callbacks, in_step=event == "training_step")
    saved = torch.load(tmp_path / "exception.ckpt", weights_only=True)
    assert saved["state_dict"]
    done = {"training_step": 3, "on_train_epoch_start": 2, "on_train_batch_end": 3, "on_train_epoch_end": 4,
            "on_validation_end": 4, "on_fit_end": 8}  # fmt: skip
    assert saved["global_step"] == done[event]


def test_model_checkpoint_on_exception_run_condition_on_train_batch_start(tmp_path: Path) -> None:
    """test_model_checkpoint_on_exception_run_condition_on_train_batch_start: a step already saved
    is not saved again when the exception comes."""
    policy = ModelCheckpoint(dirpath=tmp_path, filename="already_saved", save_on_exception=True,
                             every_n_train_steps=1)  # fmt: skip
    _troubled_fit(tmp_path, [policy, Trouble("on_train_epoch_start")])
    assert _policy_files(tmp_path) == {"already_saved.ckpt"}


def test_model_checkpoint_on_exception_run_condition_on_validation_start(tmp_path: Path) -> None:
    """test_model_checkpoint_on_exception_run_condition_on_validation_start: an exception before
    any training step (Lightning: in the sanity check) saves nothing."""

    class EarlyTrouble(Callback):
        def on_train_epoch_start(self, checkpointer: Checkpointer) -> None:
            raise RuntimeError("Trouble!")

    policy = ModelCheckpoint(dirpath=tmp_path, filename="sanity_check", save_on_exception=True)
    _troubled_fit(tmp_path, [policy, EarlyTrouble()])
    assert _policy_files(tmp_path) == set()


def test_save_on_exception_never_hides_the_exception(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ckpthooks: when the exception checkpoint cannot be written, the loop's exception still
    propagates and the failure is logged."""
    (tmp_path / "blocked").write_text("a file where the folder should be")
    policy = ModelCheckpoint(dirpath=tmp_path / "blocked", filename="exception", save_on_exception=True,
                             every_n_epochs=7)  # fmt: skip
    _troubled_fit(tmp_path, [policy], in_step=True)
    assert "save_on_exception" in caplog.text


def test_save_last_only_when_checkpoint_saved(tmp_path: Path) -> None:
    """test_save_last_only_when_checkpoint_saved: top-1 by a validation loss that goes down and up
    leaves two files, the best and ``last``."""

    def validate(ckpt: Checkpointer) -> bool:
        epoch = ckpt.current_epoch
        ckpt.log("val_loss", 1.0 - epoch * 0.1 if epoch % 2 == 0 else 1.0 + epoch * 0.1)
        return True

    policy = ModelCheckpoint(dirpath=tmp_path, filename="best-{epoch}-{val_loss:.2f}", monitor="val_loss",
                             save_last=True, save_top_k=1, save_on_train_epoch_end=False)  # fmt: skip
    _fit(tmp_path, [policy], epochs=4, batches=2, validate=validate)
    assert _policy_files(tmp_path) == {"best-epoch=2-val_loss=0.80.ckpt", "last.ckpt"}


def test_save_last_without_save_on_train_epoch_and_without_val(tmp_path: Path) -> None:
    """test_save_last_without_save_on_train_epoch_and_without_val: ``save_last=True`` with
    ``save_on_train_epoch_end=False`` and no validation at all still writes ``last``."""
    policy = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_on_train_epoch_end=False)
    _fit(tmp_path, [policy], epochs=2, batches=2)
    assert (tmp_path / "last.ckpt").exists()


def test_none_monitor_not_alternating(tmp_path: Path) -> None:
    """test_none_monitor_not_alternating: top-1 without a monitor and a fixed name rewrites
    ``model.ckpt``; it never alternates with ``model-v1.ckpt``."""
    seen: list[set[str]] = []

    class ListDir(Callback):
        def on_train_epoch_start(self, checkpointer: Checkpointer) -> None:
            if checkpointer.current_epoch > 0:
                seen.append(_policy_files(tmp_path))

    policy = ModelCheckpoint(dirpath=tmp_path, monitor=None, save_top_k=1, filename="model")
    _fit(tmp_path, [policy, ListDir()], epochs=3, batches=1)
    assert seen == [{"model.ckpt"}, {"model.ckpt"}]
    assert _policy_files(tmp_path) == {"model.ckpt"}
