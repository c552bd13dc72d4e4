"""Restore strictness: missing, unexpected and incompatible state, and files that are unsafe to load."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import ckpthooks
from ckpthooks import (
    Checkpointer,
    IncompatibleStateError,
    MissingStateError,
    UnexpectedStateError,
    UnsafeCheckpointError,
)
from tests.helpers import CountingCallback, StatefulTensorHolder, TinyNet, make_data, train_step


def checkpointer(root: Path, **options: Any) -> Checkpointer:
    return Checkpointer(default_root_dir=root, enable_checkpointing=False, **options)


def trained(seed: int = 0, hidden: int = 8) -> tuple[TinyNet, torch.optim.SGD]:
    torch.manual_seed(seed)
    model = TinyNet(hidden=hidden)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for batch in make_data(2, seed=seed):
        train_step(model, optimizer, batch)
    return model, optimizer


def save_model_only(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    model, _ = trained(seed)
    ckpt = checkpointer(path.parent)
    ckpt.track(model=model)
    ckpt.save_checkpoint(path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_model_equals(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def assert_model_differs(model: nn.Module, other: dict[str, torch.Tensor]) -> None:
    assert not torch.equal(model.state_dict()["l1.weight"], other["l1.weight"])


# --------------------------------------------------------------------------- missing optimizer state


def test_missing_optimizer_state_raises_missing_state_error_naming_optimizer_states(
    tmp_path: Path,
) -> None:
    save_model_only(tmp_path / "model-only.ckpt")
    model, optimizer = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=model, optimizers=optimizer)
    with pytest.raises(MissingStateError, match="optimizer_states") as info:
        ckpt.restore(tmp_path / "model-only.ckpt")
    assert any("optimizer_states" in name for name in info.value.names)


def test_missing_state_error_is_a_checkpoint_error_and_key_error(tmp_path: Path) -> None:
    save_model_only(tmp_path / "model-only.ckpt")
    model, optimizer = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=model, optimizers=optimizer)
    with pytest.raises(ckpthooks.CheckpointError) as info:
        ckpt.restore(tmp_path / "model-only.ckpt")
    assert isinstance(info.value, KeyError)
    assert not str(info.value).startswith(("'", '"'))  # not quoted like a plain KeyError


def test_weights_only_file_missing_optimizer_state_message_mentions_weights_only(
    tmp_path: Path,
) -> None:
    model, optimizer = trained()
    saver = checkpointer(tmp_path).track(model=model, optimizers=optimizer)
    saver.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
    assert "optimizer_states" not in torch.load(tmp_path / "weights.ckpt", weights_only=True)

    fresh_model, fresh_optimizer = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh_model, optimizers=fresh_optimizer)
    with pytest.raises(MissingStateError) as info:
        ckpt.restore(tmp_path / "weights.ckpt")
    message = str(info.value)
    assert "optimizer_states" in message
    assert "weights_only" in message.replace("-", "_").replace(" ", "_")


def test_missing_optimizer_state_message_omits_weights_only_hint_for_full_files(
    tmp_path: Path,
) -> None:
    save_model_only(tmp_path / "model-only.ckpt")
    model, optimizer = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=model, optimizers=optimizer)
    with pytest.raises(MissingStateError) as info:
        ckpt.restore(tmp_path / "model-only.ckpt")
    assert "weights_only" not in str(info.value)


# --------------------------------------------------------------------------- optimizer count mismatch


def test_two_saved_optimizers_into_one_tracked_raises_unexpected_naming_index_1(
    tmp_path: Path,
) -> None:
    model, _ = trained()
    first = torch.optim.SGD(model.l1.parameters(), lr=0.1)
    second = torch.optim.SGD(model.l2.parameters(), lr=0.1)
    checkpointer(tmp_path).track(model=model, optimizers=[first, second]).save_checkpoint(
        tmp_path / "two.ckpt"
    )
    fresh, _ = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(
        model=fresh, optimizers=torch.optim.SGD(fresh.parameters(), lr=0.1)
    )
    with pytest.raises(UnexpectedStateError, match=r"optimizer_states\[1\]") as info:
        ckpt.restore(tmp_path / "two.ckpt")
    assert "optimizer_states[1]" in info.value.names
    assert "optimizer_states[0]" not in info.value.names


def test_one_saved_optimizer_into_two_tracked_raises_missing_naming_index_1(
    tmp_path: Path,
) -> None:
    model, optimizer = trained()
    checkpointer(tmp_path).track(model=model, optimizers=optimizer).save_checkpoint(
        tmp_path / "one.ckpt"
    )
    fresh, _ = trained(seed=5)
    optimizers = [
        torch.optim.SGD(fresh.l1.parameters(), lr=0.1),
        torch.optim.SGD(fresh.l2.parameters(), lr=0.1),
    ]
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh, optimizers=optimizers)
    with pytest.raises(MissingStateError, match=r"optimizer_states\[1\]"):
        ckpt.restore(tmp_path / "one.ckpt")


# --------------------------------------------------------------------------- tracked-by-name objects


def test_component_in_file_but_not_tracked_raises_unexpected_naming_it(tmp_path: Path) -> None:
    model, _ = trained()
    checkpointer(tmp_path).track(model=model, ema=StatefulTensorHolder()).save_checkpoint(
        tmp_path / "ema.ckpt"
    )
    fresh, _ = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh)
    with pytest.raises(UnexpectedStateError, match="ema") as info:
        ckpt.restore(tmp_path / "ema.ckpt")
    assert any("ema" in name for name in info.value.names)


def test_new_tracked_component_missing_from_file_raises_missing_naming_it(tmp_path: Path) -> None:
    save_model_only(tmp_path / "model-only.ckpt")
    fresh, _ = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh, sampler=StatefulTensorHolder())
    with pytest.raises(MissingStateError, match="sampler") as info:
        ckpt.restore(tmp_path / "model-only.ckpt")
    assert any("sampler" in name for name in info.value.names)


# --------------------------------------------------------------------------- stateful callbacks


def test_stateful_callback_missing_from_file_is_named(tmp_path: Path) -> None:
    save_model_only(tmp_path / "model-only.ckpt")
    fresh, _ = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume", callbacks=[CountingCallback()]).track(model=fresh)
    with pytest.raises(MissingStateError, match="CountingCallback"):
        ckpt.restore(tmp_path / "model-only.ckpt")


def test_stateful_callback_in_file_but_absent_now_is_named(tmp_path: Path) -> None:
    model, _ = trained()
    callback = CountingCallback()
    callback.batches = 3
    saver = checkpointer(tmp_path, callbacks=[callback]).track(model=model)
    saver.save_checkpoint(tmp_path / "cb.ckpt")
    fresh, _ = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh)
    with pytest.raises(UnexpectedStateError, match="CountingCallback"):
        ckpt.restore(tmp_path / "cb.ckpt")


# --------------------------------------------------------------------------- strict=False


def _save_with_ema_without_optimizer(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    model, _ = trained()
    ema = StatefulTensorHolder(fill=4.0)
    checkpointer(tmp_path).track(model=model, ema=ema).save_checkpoint(tmp_path / "partial.ckpt")
    return tmp_path / "partial.ckpt", snapshot(model)


def test_checkpointer_strict_false_restores_the_rest_without_raising(tmp_path: Path) -> None:
    path, saved = _save_with_ema_without_optimizer(tmp_path)
    fresh, optimizer = trained(seed=5)
    sampler = StatefulTensorHolder(fill=9.0)
    ckpt = checkpointer(tmp_path / "resume", strict=False)
    ckpt.track(model=fresh, optimizers=optimizer, sampler=sampler)  # no ema; sampler is new
    report = ckpt.restore(path)
    assert report is not None
    assert_model_equals(fresh, saved)
    assert torch.equal(sampler.value, torch.full((3,), 9.0))  # left as it was
    assert any("optimizer_states" in name for name in report.missing)
    assert any("sampler" in name for name in report.missing)
    assert any("ema" in name for name in report.unexpected)


def test_restore_call_strict_false_restores_the_rest_without_raising(tmp_path: Path) -> None:
    path, saved = _save_with_ema_without_optimizer(tmp_path)
    fresh, optimizer = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh, optimizers=optimizer)
    report = ckpt.restore(path, strict=False)
    assert report is not None
    assert "model" in report.restored
    assert_model_equals(fresh, saved)
    assert ckpt.global_step == 0


def test_restore_call_strict_true_overrides_non_strict_checkpointer(tmp_path: Path) -> None:
    path, _ = _save_with_ema_without_optimizer(tmp_path)
    fresh, optimizer = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume", strict=False).track(model=fresh, optimizers=optimizer)
    with pytest.raises(MissingStateError):
        ckpt.restore(path, strict=True)


def test_non_strict_restore_leaves_optimizer_without_saved_state_untouched(tmp_path: Path) -> None:
    path, _ = _save_with_ema_without_optimizer(tmp_path)
    fresh, optimizer = trained(seed=5)
    before = {k: v["momentum_buffer"].clone() for k, v in optimizer.state_dict()["state"].items()}
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh, optimizers=optimizer)
    ckpt.restore(path, strict=False)
    after = optimizer.state_dict()["state"]
    assert all(torch.equal(after[k]["momentum_buffer"], v) for k, v in before.items())


# --------------------------------------------------------------------------- atomic strict failure


def test_failed_strict_restore_leaves_model_parameters_unchanged(tmp_path: Path) -> None:
    save_model_only(tmp_path / "model-only.ckpt")
    fresh, optimizer = trained(seed=5)
    before = snapshot(fresh)
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh, optimizers=optimizer)
    with pytest.raises(MissingStateError):
        ckpt.restore(tmp_path / "model-only.ckpt")
    assert_model_equals(fresh, before)


def test_failed_strict_restore_leaves_progress_callbacks_and_objects_unchanged(
    tmp_path: Path,
) -> None:
    model, _ = trained()
    callback = CountingCallback()
    callback.batches = 11
    saver = checkpointer(tmp_path, callbacks=[callback]).track(
        model=model, ema=StatefulTensorHolder(fill=2.0)
    )
    saver.progress.global_step = 11
    saver.save_checkpoint(tmp_path / "full.ckpt")

    fresh, _ = trained(seed=5)
    fresh_callback = CountingCallback()
    ema = StatefulTensorHolder(fill=-1.0)
    ckpt = checkpointer(tmp_path / "resume", callbacks=[fresh_callback])
    ckpt.track(model=fresh, ema=ema, sampler=StatefulTensorHolder())  # sampler is not in the file
    with pytest.raises(MissingStateError, match="sampler"):
        ckpt.restore(tmp_path / "full.ckpt")
    assert ckpt.global_step == 0
    assert fresh_callback.batches == 0
    assert torch.equal(ema.value, torch.full((3,), -1.0))
    assert ckpt.resumed_from is None


# --------------------------------------------------------------------------- model mismatches


def test_model_shape_mismatch_raises_incompatible_state_error(tmp_path: Path) -> None:
    save_model_only(tmp_path / "hidden8.ckpt")
    ckpt = checkpointer(tmp_path / "resume").track(model=TinyNet(hidden=16))
    with pytest.raises(IncompatibleStateError, match=r"l1\.weight"):
        ckpt.restore(tmp_path / "hidden8.ckpt")


def test_model_shape_mismatch_raises_even_when_not_strict(tmp_path: Path) -> None:
    save_model_only(tmp_path / "hidden8.ckpt")
    ckpt = checkpointer(tmp_path / "resume", strict=False).track(model=TinyNet(hidden=16))
    with pytest.raises(IncompatibleStateError):
        ckpt.restore(tmp_path / "hidden8.ckpt")


def test_model_shape_mismatch_restores_nothing_else(tmp_path: Path) -> None:
    model, _ = trained()
    saver = checkpointer(tmp_path).track(model=model, ema=StatefulTensorHolder(fill=2.0))
    saver.progress.global_step = 5
    saver.save_checkpoint(tmp_path / "hidden8.ckpt")
    ema = StatefulTensorHolder(fill=-1.0)
    ckpt = checkpointer(tmp_path / "resume").track(model=TinyNet(hidden=16), ema=ema)
    with pytest.raises(IncompatibleStateError):
        ckpt.restore(tmp_path / "hidden8.ckpt")
    assert ckpt.global_step == 0
    assert torch.equal(ema.value, torch.full((3,), -1.0))


class TinyNetWithExtra(TinyNet):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("extra_buffer", torch.arange(3.0))


def test_unexpected_model_keys_raise_unexpected_state_error_naming_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpointer(tmp_path).track(model=TinyNetWithExtra()).save_checkpoint(tmp_path / "x.ckpt")
    ckpt = checkpointer(tmp_path / "resume").track(model=TinyNet())
    with pytest.raises(UnexpectedStateError, match="extra_buffer") as info:
        ckpt.restore(tmp_path / "x.ckpt")
    assert info.value.names == ("state_dict['extra_buffer']",)


def test_a_model_that_does_not_fit_is_left_untouched(tmp_path: Path) -> None:
    save_model_only(tmp_path / "hidden8.ckpt")
    torch.manual_seed(3)
    target = TinyNetWithExtra(hidden=16)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(IncompatibleStateError, match=r"shape \(8, 4\) in the checkpoint but \(16, 4\)"):
        checkpointer(tmp_path / "resume", strict=False).track(model=target).restore(tmp_path / "hidden8.ckpt")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_unexpected_model_keys_are_ignored_when_not_strict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = TinyNetWithExtra()
    checkpointer(tmp_path).track(model=source).save_checkpoint(tmp_path / "x.ckpt")
    torch.manual_seed(1)
    target = TinyNet()
    report = checkpointer(tmp_path / "resume").track(model=target).restore(
        tmp_path / "x.ckpt", strict=False
    )
    assert report is not None
    expected = {k: v for k, v in source.state_dict().items() if k != "extra_buffer"}
    assert_model_equals(target, expected)


def test_missing_model_keys_raise_missing_state_error_naming_them(tmp_path: Path) -> None:
    checkpointer(tmp_path).track(model=TinyNet()).save_checkpoint(tmp_path / "plain.ckpt")
    ckpt = checkpointer(tmp_path / "resume").track(model=TinyNetWithExtra())
    with pytest.raises(MissingStateError, match="extra_buffer"):
        ckpt.restore(tmp_path / "plain.ckpt")


# --------------------------------------------------------------------------- unsafe files


class CustomPayload:
    """A class torch.load(weights_only=True) refuses to unpickle."""

    def __init__(self) -> None:
        self.value = 1


class RunsCommand:
    """Unpickling this runs a shell command (the classic malicious-pickle payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_restore_of_file_with_custom_class_raises_unsafe_checkpoint_error(tmp_path: Path) -> None:
    model = TinyNet()
    torch.save({"state_dict": model.state_dict(), "extra": CustomPayload()}, tmp_path / "p.ckpt")
    ckpt = checkpointer(tmp_path / "resume").track(model=TinyNet())
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False"):
        ckpt.restore(tmp_path / "p.ckpt")


def test_unsafe_checkpoint_error_names_the_offending_class(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "extra": CustomPayload()}, tmp_path / "p.ckpt")
    ckpt = checkpointer(tmp_path / "resume").track(model=TinyNet())
    with pytest.raises(UnsafeCheckpointError, match="CustomPayload"):
        ckpt.restore(tmp_path / "p.ckpt")


def test_restore_of_malicious_pickle_does_not_run_its_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": TinyNet().state_dict(), "payload": RunsCommand(marker)}, path)
    ckpt = checkpointer(tmp_path / "resume").track(model=TinyNet())
    with pytest.raises(UnsafeCheckpointError):
        ckpt.restore(path)
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_restore_of_missing_explicit_path_raises_checkpoint_not_found(tmp_path: Path) -> None:
    ckpt = checkpointer(tmp_path).track(model=TinyNet())
    with pytest.raises(ckpthooks.CheckpointNotFoundError):
        ckpt.restore(tmp_path / "nope.ckpt")


def test_a_partial_restore_names_what_is_missing_and_what_went_unused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning read "missing ...; not restored nothing" when the checkpoint had nothing extra."""
    model, _ = trained()
    checkpointer(tmp_path).track(model=model).save_checkpoint(tmp_path / "model-only.ckpt")
    fresh, optimizer = trained(seed=5)
    ckpt = checkpointer(tmp_path / "resume").track(model=fresh, optimizers=optimizer)
    with caplog.at_level("WARNING", logger="ckpthooks"):
        ckpt.restore(tmp_path / "model-only.ckpt", strict=False)
    (message,) = [r.getMessage() for r in caplog.records if "partial restore" in r.getMessage()]
    assert "state the checkpoint lacks (left as it was): checkpoint['optimizer_states']" in message
    assert message.endswith("state in the checkpoint that nothing restored: none")
    assert "nothing" not in message.replace("nothing restored", "")
