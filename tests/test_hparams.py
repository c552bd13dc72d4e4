"""save_hyperparameters(), hparams and load_from_checkpoint()."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ckpthooks import (
    AttributeDict,
    Checkpointer,
    ConfigurationError,
    HyperparametersMixin,
    IncompatibleStateError,
    MissingStateError,
    UnsafeCheckpointError,
    UnsafeStateError,
)
from tests.helpers import TinyNet


def save(model: Any, path: Path) -> Path:
    ckpt = Checkpointer(default_root_dir=path.parent, enable_checkpointing=False)
    ckpt.track(model=model)
    ckpt.save_checkpoint(path)
    return path


# --------------------------------------------------------------------------- save_hyperparameters


class Base(HyperparametersMixin, nn.Module):
    def __init__(self, width: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, width)


class Child(Base):
    def __init__(self, act: str = "relu", **kwargs: Any) -> None:
        super().__init__(**kwargs)


class WithKwargs(HyperparametersMixin, nn.Module):
    def __init__(self, lr: float = 0.1, **kwargs: Any) -> None:
        super().__init__()
        self.save_hyperparameters()


class Selective(HyperparametersMixin, nn.Module):
    def __init__(self, a: int = 1, b: int = 2, c: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters("a")


class Ignoring(HyperparametersMixin, nn.Module):
    def __init__(self, lr: float = 0.1, backbone: nn.Module | None = None, c: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "c"])
        self.backbone = backbone


class FromDict(HyperparametersMixin, nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters(config)


class FromNamespace(HyperparametersMixin, nn.Module):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.save_hyperparameters(args)


class NotIgnoringModule(HyperparametersMixin, nn.Module):
    def __init__(self, backbone: nn.Module, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = backbone


def test_save_hyperparameters_records_all_init_arguments() -> None:
    model = TinyNet(hidden=12, dropout=0.3)
    assert dict(model.hparams) == {"in_dim": 4, "hidden": 12, "out_dim": 1, "dropout": 0.3}


def test_save_hyperparameters_collects_the_subclass_super_init_chain() -> None:
    model = Child(act="gelu", width=6)
    assert dict(model.hparams) == {"act": "gelu", "width": 6, "depth": 2}


def test_save_hyperparameters_merges_var_keyword_arguments() -> None:
    model = WithKwargs(lr=0.5, warmup=10, name="x")
    assert dict(model.hparams) == {"lr": 0.5, "warmup": 10, "name": "x"}
    assert "kwargs" not in model.hparams


def test_save_hyperparameters_with_names_records_only_those() -> None:
    assert dict(Selective(a=7, b=8, c=9).hparams) == {"a": 7}


def test_save_hyperparameters_with_unknown_name_raises_configuration_error() -> None:
    class Wrong(HyperparametersMixin, nn.Module):
        def __init__(self, a: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters("nope")

    with pytest.raises(ConfigurationError, match="nope"):
        Wrong()


def test_save_hyperparameters_ignore_leaves_arguments_out() -> None:
    model = Ignoring(lr=0.2, backbone=nn.Linear(2, 2), c=5)
    assert dict(model.hparams) == {"lr": 0.2}


def test_save_hyperparameters_from_dict() -> None:
    model = FromDict({"lr": 0.01, "layers": [1, 2]})
    assert dict(model.hparams) == {"lr": 0.01, "layers": [1, 2]}


def test_save_hyperparameters_from_namespace() -> None:
    model = FromNamespace(argparse.Namespace(lr=0.02, batch_size=16))
    assert dict(model.hparams) == {"lr": 0.02, "batch_size": 16}


def test_namespace_hyperparameters_are_saved_as_a_plain_dict(tmp_path: Path) -> None:
    model = FromNamespace(argparse.Namespace(lr=0.02, nested=argparse.Namespace(k=1)))
    checkpoint = torch.load(save(model, tmp_path / "ns.ckpt"), weights_only=True)
    assert checkpoint["hyper_parameters"] == {"lr": 0.02, "nested": {"k": 1}}


def test_hparams_support_attribute_access() -> None:
    model = TinyNet(hidden=12)
    assert isinstance(model.hparams, AttributeDict)
    assert model.hparams.hidden == 12
    assert model.hparams.hidden == model.hparams["hidden"]
    with pytest.raises(AttributeError, match="nope"):
        _ = model.hparams.nope


def test_hparams_initial_is_unaffected_by_later_edits() -> None:
    model = FromDict({"lr": 0.1, "layers": [1, 2]})
    model.hparams.lr = 0.5
    model.hparams["layers"].append(3)
    assert model.hparams.lr == 0.5
    assert dict(model.hparams_initial) == {"lr": 0.1, "layers": [1, 2]}


def test_hparams_initial_is_a_copy_callers_cannot_change() -> None:
    model = TinyNet()
    model.hparams_initial["hidden"] = 99
    assert model.hparams_initial.hidden == 8


def test_hparams_are_empty_without_save_hyperparameters() -> None:
    class Plain(HyperparametersMixin, nn.Module):
        pass

    assert dict(Plain().hparams) == {}


def test_save_hyperparameters_outside_init_raises_configuration_error() -> None:
    class Late(HyperparametersMixin, nn.Module):
        def __init__(self, a: int = 1) -> None:
            super().__init__()

    model = Late()
    with pytest.raises(ConfigurationError, match="__init__"):
        model.save_hyperparameters()


def test_edited_hparams_are_what_a_checkpoint_stores(tmp_path: Path) -> None:
    model = TinyNet(hidden=8)
    model.hparams.dropout = 0.125
    checkpoint = torch.load(save(model, tmp_path / "m.ckpt"), weights_only=True)
    assert checkpoint["hyper_parameters"]["dropout"] == 0.125


def test_module_argument_not_ignored_makes_save_raise_unsafe_state_error(tmp_path: Path) -> None:
    model = NotIgnoringModule(nn.Linear(2, 2))
    with pytest.raises(UnsafeStateError, match=r"checkpoint\['hyper_parameters'\]\['backbone'\]"):
        save(model, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


# --------------------------------------------------------------------------- load_from_checkpoint


class RecordsLoad(TinyNet):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[dict[str, Any]] = []

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.seen.append(checkpoint)


@pytest.fixture
def saved_tiny(tmp_path: Path) -> tuple[Path, TinyNet]:
    torch.manual_seed(0)
    model = TinyNet(hidden=12, dropout=0.1)
    return save(model, tmp_path / "tiny.ckpt"), model


def test_load_from_checkpoint_rebuilds_with_saved_hyperparameters(
    saved_tiny: tuple[Path, TinyNet],
) -> None:
    path, _ = saved_tiny
    model = TinyNet.load_from_checkpoint(path)
    assert isinstance(model, TinyNet)
    assert dict(model.hparams) == {"in_dim": 4, "hidden": 12, "out_dim": 1, "dropout": 0.1}
    assert model.l1.out_features == 12


def test_load_from_checkpoint_weights_equal_saved(saved_tiny: tuple[Path, TinyNet]) -> None:
    path, original = saved_tiny
    torch.manual_seed(123)  # the rebuilt model starts from other random weights
    model = TinyNet.load_from_checkpoint(path)
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_load_from_checkpoint_shape_changing_override_raises_incompatible_state(
    saved_tiny: tuple[Path, TinyNet],
) -> None:
    path, _ = saved_tiny
    with pytest.raises(IncompatibleStateError):
        TinyNet.load_from_checkpoint(path, hidden=16)


def test_load_from_checkpoint_override_wins_over_saved_value(
    saved_tiny: tuple[Path, TinyNet],
) -> None:
    path, original = saved_tiny
    model = TinyNet.load_from_checkpoint(path, dropout=0.5)
    assert model.hparams.dropout == 0.5
    assert model.drop.p == 0.5
    assert model.hparams.hidden == 12
    assert torch.equal(model.l1.weight, original.l1.weight)


def test_load_from_checkpoint_calls_on_load_checkpoint_with_the_checkpoint(
    tmp_path: Path,
) -> None:
    path = save(RecordsLoad(hidden=6), tmp_path / "r.ckpt")
    model = RecordsLoad.load_from_checkpoint(path)
    assert len(model.seen) == 1
    assert model.seen[0]["hyper_parameters"]["hidden"] == 6
    assert "state_dict" in model.seen[0]


def test_load_from_checkpoint_without_state_dict_raises_missing_state(tmp_path: Path) -> None:
    ckpt = Checkpointer(default_root_dir=tmp_path, enable_checkpointing=False)
    ckpt.save_checkpoint(tmp_path / "no-model.ckpt")
    assert "state_dict" not in torch.load(tmp_path / "no-model.ckpt", weights_only=True)
    with pytest.raises(MissingStateError, match="state_dict"):
        TinyNet.load_from_checkpoint(tmp_path / "no-model.ckpt")


def test_load_from_checkpoint_reads_a_weights_only_save(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet(hidden=5)
    ckpt = Checkpointer(default_root_dir=tmp_path, enable_checkpointing=False)
    ckpt.track(model=model, optimizers=torch.optim.SGD(model.parameters(), lr=0.1))
    ckpt.save_checkpoint(tmp_path / "w.ckpt", weights_only=True)
    loaded = TinyNet.load_from_checkpoint(tmp_path / "w.ckpt")
    assert loaded.hparams.hidden == 5
    assert torch.equal(loaded.l2.weight, model.l2.weight)


def test_load_from_checkpoint_of_subclass_chain_rebuilds_every_argument(tmp_path: Path) -> None:
    path = save(Child(act="tanh", width=3, depth=5), tmp_path / "child.ckpt")
    model = Child.load_from_checkpoint(path)
    assert dict(model.hparams) == {"act": "tanh", "width": 3, "depth": 5}
    assert model.layer.in_features == 3


def test_load_from_checkpoint_of_dict_hyperparameters(tmp_path: Path) -> None:
    path = save(FromDict({"lr": 0.3}), tmp_path / "d.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"] == {"lr": 0.3}


class RunsCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_load_from_checkpoint_refuses_a_malicious_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": TinyNet().state_dict(), "hyper_parameters": RunsCommand(marker)}, path)
    with pytest.raises(UnsafeCheckpointError):
        TinyNet.load_from_checkpoint(path)
    assert not marker.exists()


def test_load_from_checkpoint_rebuilds_a_model_whose_init_takes_a_config_dict(
    tmp_path: Path,
) -> None:
    path = save(FromDict({"lr": 0.3, "layers": [4, 2]}), tmp_path / "d.ckpt")
    model = FromDict.load_from_checkpoint(path)
    assert dict(model.hparams) == {"lr": 0.3, "layers": [4, 2]}


def test_dict_hyperparameters_record_the_init_argument_name(tmp_path: Path) -> None:
    checkpoint = torch.load(save(FromDict({"lr": 0.3}), tmp_path / "d.ckpt"), weights_only=True)
    assert checkpoint["hparams_name"] == "config"


class UsesNamespace(HyperparametersMixin, nn.Module):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.save_hyperparameters(args)
        self.layer = nn.Linear(args.width, 1)


def test_load_from_checkpoint_rebuilds_a_model_whose_init_takes_a_namespace(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    original = UsesNamespace(argparse.Namespace(width=3, lr=0.1))
    path = save(original, tmp_path / "ns.ckpt")
    model = UsesNamespace.load_from_checkpoint(path)
    assert dict(model.hparams) == {"width": 3, "lr": 0.1}
    assert torch.equal(model.layer.weight, original.layer.weight)


class KeywordOnly(HyperparametersMixin, nn.Module):
    def __init__(self, a: int = 1, *extra: Any, b: int = 2) -> None:
        super().__init__()
        local_value = a * 10  # a local variable, not an argument
        self.save_hyperparameters()
        self.local_value = local_value


def test_save_hyperparameters_records_keyword_only_but_not_locals_or_var_positional() -> None:
    model = KeywordOnly(3, 4, 5, b=6)
    assert dict(model.hparams) == {"a": 3, "b": 6}


class HyperDataModule(HyperparametersMixin):
    def __init__(self, batch_size: int = 32, root: str = "/data") -> None:
        self.save_hyperparameters()


def test_datamodule_hyperparameters_are_saved_under_datamodule_keys(tmp_path: Path) -> None:
    ckpt = Checkpointer(default_root_dir=tmp_path, enable_checkpointing=False)
    ckpt.track(model=TinyNet(hidden=3), datamodule=HyperDataModule(batch_size=8))
    ckpt.save_checkpoint(tmp_path / "dm.ckpt")
    checkpoint = torch.load(tmp_path / "dm.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"] == {"batch_size": 8, "root": "/data"}
    assert checkpoint["datamodule_hparams_name"] == "kwargs"
    assert checkpoint["hyper_parameters"]["hidden"] == 3
