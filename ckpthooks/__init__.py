"""ckpthooks: Lightning-grade checkpointing for any PyTorch training loop.

``import ckpthooks`` is cheap: it imports neither torch nor any plugin. Names are imported on first
use, and the plugin host is built the first time a checkpointer (or the CLI) needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ckpthooks._version import __version__
from ckpthooks.exceptions import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigurationError,
    CorruptCheckpointError,
    DistributedCheckpointError,
    DuplicateContributionError,
    IncompatibleFormatError,
    IncompatibleStateError,
    MissingStateError,
    PluginError,
    PluginLoadError,
    StorageError,
    UnexpectedStateError,
    UnsafeCheckpointError,
    UnsafeStateError,
)
from ckpthooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from ckpthooks.callbacks import Callback
    from ckpthooks.checkpointer import Checkpointer, FitResult, RestoreReport
    from ckpthooks.components import StateComponent
    from ckpthooks.distributed import rank_zero_only
    from ckpthooks.hparams import AttributeDict, HyperparametersMixin
    from ckpthooks.io.base import CheckpointIO, CheckpointIOSpec, SaveResult
    from ckpthooks.io.torch_io import TorchCheckpointIO
    from ckpthooks.manifest import CommittedCheckpoint, Manifest
    from ckpthooks.plugin_host import PluginHost, get_plugin_host
    from ckpthooks.policies.milestones import KeepMilestones
    from ckpthooks.policies.model_checkpoint import ModelCheckpoint
    from ckpthooks.retention import Pruner, RetentionRule, TopKRule
    from ckpthooks.store import CheckpointStore

_LAZY = {
    "AttributeDict": "ckpthooks.hparams",
    "Callback": "ckpthooks.callbacks",
    "CheckpointIO": "ckpthooks.io.base",
    "CheckpointIOSpec": "ckpthooks.io.base",
    "CheckpointStore": "ckpthooks.store",
    "Checkpointer": "ckpthooks.checkpointer",
    "CommittedCheckpoint": "ckpthooks.manifest",
    "FitResult": "ckpthooks.checkpointer",
    "HyperparametersMixin": "ckpthooks.hparams",
    "KeepMilestones": "ckpthooks.policies.milestones",
    "Manifest": "ckpthooks.manifest",
    "ModelCheckpoint": "ckpthooks.policies.model_checkpoint",
    "PluginHost": "ckpthooks.plugin_host",
    "Pruner": "ckpthooks.retention",
    "RetentionRule": "ckpthooks.retention",
    "RestoreReport": "ckpthooks.checkpointer",
    "SaveResult": "ckpthooks.io.base",
    "StateComponent": "ckpthooks.components",
    "TopKRule": "ckpthooks.retention",
    "TorchCheckpointIO": "ckpthooks.io.torch_io",
    "get_plugin_host": "ckpthooks.plugin_host",
    "rank_zero_only": "ckpthooks.distributed",
}

__all__ = [
    "AttributeDict",
    "Callback",
    "CheckpointError",
    "CheckpointIO",
    "CheckpointIOSpec",
    "CheckpointNotFoundError",
    "CheckpointStore",
    "Checkpointer",
    "CommittedCheckpoint",
    "ConfigurationError",
    "CorruptCheckpointError",
    "DistributedCheckpointError",
    "DuplicateContributionError",
    "FitResult",
    "HyperparametersMixin",
    "IncompatibleFormatError",
    "IncompatibleStateError",
    "KeepMilestones",
    "Manifest",
    "MissingStateError",
    "ModelCheckpoint",
    "PluginError",
    "PluginHost",
    "PluginLoadError",
    "Pruner",
    "RestoreReport",
    "RetentionRule",
    "SaveResult",
    "StateComponent",
    "StorageError",
    "TopKRule",
    "TorchCheckpointIO",
    "UnexpectedStateError",
    "UnsafeCheckpointError",
    "UnsafeStateError",
    "__version__",
    "get_plugin_host",
    "hookimpl",
    "rank_zero_only",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpthooks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
