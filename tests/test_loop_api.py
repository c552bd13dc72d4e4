"""The loop API: the ``loop`` decorator, ``fit``, explicit event calls and ``batches()``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from ckpthooks import Callback, Checkpointer, ConfigurationError, ModelCheckpoint
from ckpthooks._catalog import iter_committed, read_manifest
from ckpthooks._manifest import MANIFEST_SUFFIX
from tests.helpers import TinyNet, make_data, train_step

BATCHES = 4


class Crash(RuntimeError):
    """A simulated crash in the middle of training."""


class Setup:
    """A model, an optimizer, data and a checkpointer tracking them."""

    def __init__(self, root: Any, seed: int = 0, **kwargs: Any) -> None:
        torch.manual_seed(seed)
        self.model = TinyNet()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.data = make_data(batches=BATCHES)
        self.ckpt = Checkpointer(root, **kwargs).track(model=self.model, optimizers=self.optimizer)
        self.seen: list[tuple[int, int]] = []  # (epoch, index of the batch in the data)

    def epoch(self, epoch: int, crash_at_step: int | None = None) -> float:
        loss = 0.0
        for batch in self.ckpt.batches(self.data):
            index = next(i for i, b in enumerate(self.data) if b is batch)
            self.seen.append((epoch, index))
            if crash_at_step is not None and self.ckpt.global_step == crash_at_step:
                raise Crash(f"crash at step {crash_at_step}")
            loss = train_step(self.model, self.optimizer, batch)
        return loss


def _listing(folder: Any) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------- the decorator and fit


def test_loop_calls_the_function_once_per_epoch(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    calls: list[int] = []

    @s.ckpt.loop(max_epochs=3)
    def train(epoch: int) -> int:
        calls.append(epoch)
        s.epoch(epoch)
        return epoch * 10

    result = train()
    assert calls == [0, 1, 2]
    assert result.start_epoch == 0
    assert result.epochs_run == 3
    assert result.global_step == 3 * BATCHES == s.ckpt.global_step
    assert result.restore is None
    assert result.outputs == [0, 10, 20]
    assert train.__name__ == "train"


def test_loop_with_a_zero_argument_function_and_extra_arguments(tmp_path: Any) -> None:
    s = Setup(tmp_path, enable_checkpointing=False)
    epochs: list[int] = []

    @s.ckpt.loop(max_epochs=2)
    def train() -> None:
        epochs.append(s.ckpt.current_epoch)
        s.epoch(s.ckpt.current_epoch)

    assert train().epochs_run == 2
    assert epochs == [0, 1]

    seen: list[tuple[int, str, int]] = []
    s2 = Setup(tmp_path / "b", enable_checkpointing=False)
    result = s2.ckpt.fit(lambda epoch, tag, k=0: seen.append((epoch, tag, k)), 2, args=("x",), kwargs={"k": 5})
    assert seen == [(0, "x", 5), (1, "x", 5)]
    assert result.epochs_run == 2


def test_decorated_function_passes_its_arguments(tmp_path: Any) -> None:
    s = Setup(tmp_path, enable_checkpointing=False)
    seen: list[tuple[int, int]] = []

    @s.ckpt.loop(max_epochs=2)
    def train(epoch: int, scale: int) -> None:
        seen.append((epoch, scale))

    train(7)
    assert seen == [(0, 7), (1, 7)]


def test_global_step_counts_batches(tmp_path: Any) -> None:
    s = Setup(tmp_path, enable_checkpointing=False)
    steps: list[int] = []

    @s.ckpt.loop(max_epochs=2)
    def train(epoch: int) -> None:
        for batch in s.ckpt.batches(s.data):
            steps.append(s.ckpt.global_step)
            train_step(s.model, s.optimizer, batch)

    train()
    assert steps == list(range(2 * BATCHES))
    assert s.ckpt.global_step == 2 * BATCHES
    assert s.ckpt.batch_idx == BATCHES


def test_break_does_not_count_the_current_batch(tmp_path: Any) -> None:
    s = Setup(tmp_path, enable_checkpointing=False)

    @s.ckpt.loop(max_epochs=1)
    def train(epoch: int) -> None:
        for i, _batch in enumerate(s.ckpt.batches(s.data)):
            if i == 2:
                break

    assert train().global_step == 2


def test_default_policy_keeps_the_newest_epoch_checkpoint(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    listings: list[list[str]] = []

    @s.ckpt.loop(max_epochs=3)
    def train(epoch: int) -> None:
        s.epoch(epoch)

    class Lister(Callback):
        def on_validation_end(self, checkpointer: Any) -> None:
            listings.append(_listing(tmp_path / "checkpoints"))

    s.ckpt.callbacks.append(Lister())
    train()
    name = f"epoch=2-step={3 * BATCHES}.ckpt"
    assert _listing(tmp_path) == ["checkpoints"]
    assert _listing(tmp_path / "checkpoints") == [name, name + MANIFEST_SUFFIX]
    # one file per epoch end, each replacing the previous one
    assert [len(x) for x in listings] == [2, 2, 2]
    assert listings[0] == [f"epoch=0-step={BATCHES}.ckpt", f"epoch=0-step={BATCHES}.ckpt{MANIFEST_SUFFIX}"]
    manifest = read_manifest(str(tmp_path / "checkpoints" / name))
    assert manifest is not None
    assert (manifest.epoch, manifest.global_step) == (2, 3 * BATCHES)
    assert s.ckpt.find_checkpoint("last") == str(tmp_path / "checkpoints" / name)


def test_disabled_checkpointing_writes_nothing(tmp_path: Any) -> None:
    s = Setup(tmp_path / "root", enable_checkpointing=False)
    assert not any(isinstance(cb, ModelCheckpoint) for cb in s.ckpt.callbacks)

    @s.ckpt.loop(max_epochs=2)
    def train(epoch: int) -> None:
        s.epoch(epoch)

    assert train().epochs_run == 2
    assert _listing(tmp_path / "root") == []
    assert list(iter_committed(str(tmp_path))) == []


# ---------------------------------------------------------------------- resume


def _run(root: Any, max_epochs: int, ckpt_path: str | None = None, seed: int = 0, **kwargs: Any) -> tuple[Setup, Any]:
    s = Setup(root, seed=seed, **kwargs)

    @s.ckpt.loop(max_epochs=max_epochs, ckpt_path=ckpt_path)
    def train(epoch: int) -> None:
        s.epoch(epoch)

    return s, train()


def test_resume_from_last_continues_at_the_next_epoch(tmp_path: Any) -> None:
    first, result = _run(tmp_path, 2)
    assert result.epochs_run == 2
    trained = _params(first.model)
    saved = str(tmp_path / "checkpoints" / f"epoch=1-step={2 * BATCHES}.ckpt")
    assert first.ckpt.find_checkpoint("last") == saved

    # a new process: fresh objects with other initial weights
    second = Setup(tmp_path, seed=123)
    restored_params: list[dict[str, torch.Tensor]] = []

    @second.ckpt.loop(max_epochs=4, ckpt_path="last")
    def train(epoch: int) -> None:
        if not restored_params:
            restored_params.append(_params(second.model))
        second.epoch(epoch)

    result = train()
    assert result.start_epoch == 2
    assert result.epochs_run == 2
    assert result.global_step == 4 * BATCHES
    assert result.restore is not None
    assert result.restore.path == saved
    assert (result.restore.epoch, result.restore.global_step) == (1, 2 * BATCHES)
    assert {"model", "optimizers", "progress"} <= set(result.restore.restored)
    assert all(torch.equal(restored_params[0][k], v) for k, v in trained.items())
    assert {e for e, _ in second.seen} == {2, 3}
    assert second.ckpt.resumed_from == saved
    # the file the run resumed from is kept, the new run's latest is there too
    assert _listing(tmp_path / "checkpoints") == sorted(
        [
            f"epoch=1-step={2 * BATCHES}.ckpt",
            f"epoch=1-step={2 * BATCHES}.ckpt{MANIFEST_SUFFIX}",
            f"epoch=3-step={4 * BATCHES}.ckpt",
            f"epoch=3-step={4 * BATCHES}.ckpt{MANIFEST_SUFFIX}",
        ]
    )


def test_resume_matches_an_uninterrupted_run(tmp_path: Any) -> None:
    straight, _ = _run(tmp_path / "straight", 4)
    _run(tmp_path / "split", 2)
    resumed, result = _run(tmp_path / "split", 4, ckpt_path="last", seed=99)
    assert result.start_epoch == 2
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[key], value), key


def test_resume_when_already_finished_runs_zero_epochs(tmp_path: Any) -> None:
    _run(tmp_path, 2)
    s = Setup(tmp_path, seed=1)
    calls: list[int] = []

    @s.ckpt.loop(max_epochs=2, ckpt_path="last")
    def train(epoch: int) -> None:
        calls.append(epoch)

    result = train()
    assert calls == []
    assert result.start_epoch == 2
    assert result.epochs_run == 0
    assert result.global_step == 2 * BATCHES
    assert result.restore is not None


def test_last_without_any_checkpoint_starts_fresh(tmp_path: Any) -> None:
    _, result = _run(tmp_path, 1, ckpt_path="last")
    assert result.restore is None
    assert result.start_epoch == 0 and result.epochs_run == 1


def test_mid_epoch_checkpoint_resumes_inside_the_epoch(tmp_path: Any) -> None:
    def policy() -> ModelCheckpoint:
        return ModelCheckpoint(every_n_train_steps=3, save_top_k=-1)

    crashed = Setup(tmp_path, callbacks=[policy()])

    @crashed.ckpt.loop(max_epochs=3)
    def train(epoch: int) -> None:
        crashed.epoch(epoch, crash_at_step=5)

    with pytest.raises(Crash, match="crash at step 5"):
        train()
    folder = tmp_path / "checkpoints"
    assert _listing(folder) == ["epoch=0-step=3.ckpt", "epoch=0-step=3.ckpt" + MANIFEST_SUFFIX]

    resumed = Setup(tmp_path, seed=7, callbacks=[policy()])

    @resumed.ckpt.loop(max_epochs=3, ckpt_path="last")
    def train_again(epoch: int) -> None:
        resumed.epoch(epoch)

    result = train_again()
    assert result.start_epoch == 0  # the same epoch the checkpoint was taken in
    assert result.restore is not None and result.restore.path == str(folder / "epoch=0-step=3.ckpt")
    assert result.epochs_run == 3
    # the resumed epoch sees only the batch it had not finished; later epochs see all of them
    assert [i for e, i in resumed.seen if e == 0] == [3]
    assert [i for e, i in resumed.seen if e == 1] == [0, 1, 2, 3]
    assert [i for e, i in resumed.seen if e == 2] == [0, 1, 2, 3]
    assert result.global_step == 3 * BATCHES
    saved_steps = sorted(c.manifest.global_step for c in iter_committed(str(folder)))
    assert saved_steps == [3, 6, 9, 12]


def test_mid_epoch_resume_in_a_later_epoch(tmp_path: Any) -> None:
    crashed = Setup(tmp_path, callbacks=[ModelCheckpoint(every_n_train_steps=3, save_top_k=-1)])

    @crashed.ckpt.loop(max_epochs=2)
    def train(epoch: int) -> None:
        crashed.epoch(epoch, crash_at_step=7)

    with pytest.raises(Crash):
        train()

    resumed = Setup(tmp_path, seed=7, callbacks=[ModelCheckpoint(every_n_train_steps=3, save_top_k=-1)])

    @resumed.ckpt.loop(max_epochs=2, ckpt_path="last")
    def train_again(epoch: int) -> None:
        resumed.epoch(epoch)

    result = train_again()
    assert result.start_epoch == 1
    assert result.restore is not None and result.restore.global_step == 6
    assert resumed.seen == [(1, 2), (1, 3)]
    assert result.global_step == 2 * BATCHES


def test_should_stop_ends_after_the_current_epoch(tmp_path: Any) -> None:
    s = Setup(tmp_path)
    calls: list[int] = []

    @s.ckpt.loop(max_epochs=10)
    def train(epoch: int) -> None:
        calls.append(epoch)
        s.epoch(epoch)
        if epoch == 1:
            s.ckpt.should_stop = True

    result = train()
    assert calls == [0, 1]
    assert result.epochs_run == 2
    assert result.global_step == 2 * BATCHES
    # the epoch that asked to stop was still checkpointed
    assert _listing(tmp_path / "checkpoints")[0] == f"epoch=1-step={2 * BATCHES}.ckpt"


# ---------------------------------------------------------------------- callbacks


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_fit_start(self, checkpointer: Any) -> None:
        self.events.append(("fit_start",))

    def on_train_epoch_start(self, checkpointer: Any) -> None:
        self.events.append(("epoch_start", checkpointer.current_epoch))

    def on_train_batch_end(self, checkpointer: Any) -> None:
        self.events.append(("batch_end", checkpointer.global_step))

    def on_train_epoch_end(self, checkpointer: Any) -> None:
        self.events.append(("epoch_end", checkpointer.current_epoch))

    def on_validation_end(self, checkpointer: Any) -> None:
        self.events.append(("validation_end", checkpointer.current_epoch))

    def on_fit_end(self, checkpointer: Any) -> None:
        self.events.append(("fit_end",))

    def on_exception(self, checkpointer: Any, exception: BaseException) -> None:
        self.events.append(("exception", exception))


def test_callback_events_in_order(tmp_path: Any) -> None:
    recorder = Recorder()
    ckpt = Checkpointer(tmp_path, callbacks=[recorder], enable_checkpointing=False)

    @ckpt.loop(max_epochs=2)
    def train(epoch: int) -> None:
        for _ in ckpt.batches(range(2)):
            pass

    train()
    assert recorder.events == [
        ("fit_start",),
        ("epoch_start", 0),
        ("batch_end", 1),
        ("batch_end", 2),
        ("epoch_end", 0),
        ("validation_end", 0),
        ("epoch_start", 1),
        ("batch_end", 3),
        ("batch_end", 4),
        ("epoch_end", 1),
        ("validation_end", 1),
        ("fit_end",),
    ]


def test_explicit_validation_end_is_not_repeated(tmp_path: Any) -> None:
    recorder = Recorder()
    ckpt = Checkpointer(tmp_path, callbacks=[recorder], enable_checkpointing=False)

    @ckpt.loop(max_epochs=2)
    def train(epoch: int) -> None:
        for _ in ckpt.batches(range(2)):
            pass
        ckpt.log("val_loss", 1.0 / (epoch + 1))
        ckpt.validation_end()

    train()
    names = [e[0] for e in recorder.events]
    assert names.count("validation_end") == 2
    assert recorder.events[3:6] == [("batch_end", 2), ("validation_end", 0), ("epoch_end", 0)]
    assert ckpt.callback_metrics["val_loss"] == 0.5


def test_exception_reaches_callbacks_and_propagates(tmp_path: Any) -> None:
    recorder = Recorder()
    ckpt = Checkpointer(tmp_path, callbacks=[recorder], enable_checkpointing=False)
    error = ValueError("boom")

    @ckpt.loop(max_epochs=3)
    def train(epoch: int) -> None:
        if epoch == 1:
            raise error

    with pytest.raises(ValueError, match="boom") as info:
        train()
    assert info.value is error
    assert recorder.events[-1] == ("exception", error)
    assert ("fit_end",) not in recorder.events
    assert [e for e in recorder.events if e[0] == "epoch_start"] == [("epoch_start", 0), ("epoch_start", 1)]


def test_explicit_calls_without_fit(tmp_path: Any) -> None:
    recorder = Recorder()
    s = Setup(tmp_path, callbacks=[recorder, ModelCheckpoint(save_last=True)])
    s.ckpt.fit_start()
    for _ in range(2):
        s.ckpt.epoch_start()
        for batch in s.data:
            train_step(s.model, s.optimizer, batch)
            s.ckpt.step_end()
        s.ckpt.epoch_end()
    s.ckpt.fit_end()

    assert s.ckpt.global_step == 2 * BATCHES
    assert s.ckpt.current_epoch == 1
    assert [e for e in recorder.events if e[0] == "epoch_start"] == [("epoch_start", 0), ("epoch_start", 1)]
    assert recorder.events[-1] == ("fit_end",)
    folder = tmp_path / "checkpoints"
    names = [f"epoch=1-step={2 * BATCHES}.ckpt", "last.ckpt"]
    assert _listing(folder) == sorted([*names, *(n + MANIFEST_SUFFIX for n in names)])

    fresh = Setup(tmp_path, seed=5, callbacks=[ModelCheckpoint(save_last=True)])
    report = fresh.ckpt.restore("last")
    assert report is not None and report.global_step == 2 * BATCHES
    assert fresh.ckpt.progress.start_epoch == 2
    for key, value in s.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[key], value)


# ---------------------------------------------------------------------- metrics and arguments


def test_log_accepts_numbers_and_one_element_tensors(tmp_path: Any) -> None:
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False)
    ckpt.log("a", 0.25)
    ckpt.log("b", 3)
    ckpt.log("c", torch.tensor(1.5))
    ckpt.log("d", torch.tensor([2.5]))
    ckpt.log("e", torch.tensor([[4.0]], requires_grad=True).sum())
    ckpt.log_dict({"f": 1, "g": torch.tensor(0.0)})
    assert ckpt.callback_metrics == {"a": 0.25, "b": 3.0, "c": 1.5, "d": 2.5, "e": 4.0, "f": 1.0, "g": 0.0}
    assert all(type(v) is float for v in ckpt.callback_metrics.values())


@pytest.mark.parametrize("value", ["abc", None, [1.0, 2.0], {"x": 1}, torch.ones(2), object()])
def test_log_rejects_non_numbers(tmp_path: Any, value: Any) -> None:
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False)
    with pytest.raises(ConfigurationError, match="must be a number"):
        ckpt.log("metric", value)
    assert "metric" not in ckpt.callback_metrics


@pytest.mark.parametrize("name", ["", None, 3])
def test_log_rejects_bad_names(tmp_path: Any, name: Any) -> None:
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False)
    with pytest.raises(ConfigurationError):
        ckpt.log(name, 1.0)


def test_negative_max_epochs(tmp_path: Any) -> None:
    ckpt = Checkpointer(tmp_path, enable_checkpointing=False)
    calls: list[int] = []
    with pytest.raises(ConfigurationError, match="max_epochs"):
        ckpt.fit(calls.append, -1)

    @ckpt.loop(max_epochs=-2)
    def train(epoch: int) -> None:
        calls.append(epoch)

    with pytest.raises(ConfigurationError, match="max_epochs"):
        train()
    assert calls == []
    assert ckpt.fit(calls.append, 0).epochs_run == 0


# ---------------------------------------------------------------------- memory://


@pytest.fixture
def memory_root() -> Iterator[str]:
    name = f"ckpthooks-loop-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    for key in [k for k in MemoryFileSystem.store if k.startswith(f"/{name}")]:
        del MemoryFileSystem.store[key]
    MemoryFileSystem.pseudo_dirs[:] = [d for d in MemoryFileSystem.pseudo_dirs if not d.startswith(f"/{name}")]


def test_resume_on_memory_url_keeps_the_resume_file(memory_root: str) -> None:
    _run(memory_root, 2)
    saved = f"{memory_root}/checkpoints/epoch=1-step={2 * BATCHES}.ckpt"
    _, result = _run(memory_root, 4, ckpt_path="last", seed=3)
    assert result.restore is not None and result.restore.path == saved
    assert result.start_epoch == 2 and result.epochs_run == 2
    committed = sorted(c.path for c in iter_committed(memory_root))
    # never delete the checkpoint a run resumed from
    assert committed == [saved, f"{memory_root}/checkpoints/epoch=3-step={4 * BATCHES}.ckpt"]


def test_printing_the_progress_is_short(tmp_path: Any) -> None:
    """print(ckpt.progress) showed the random generator states of the epoch (16,000 characters)."""
    from ckpthooks import Checkpointer

    ckpt = Checkpointer(tmp_path, enable_checkpointing=False)
    for _ in ckpt.batches(range(3)):
        pass
    assert ckpt.progress.epoch_rng is not None  # kept for a mid-epoch resume, only not shown
    text = repr(ckpt.progress)
    assert len(text) < 300 and "global_step=3" in text and "epoch_rng" not in text
