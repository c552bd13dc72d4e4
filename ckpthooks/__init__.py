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
    DestinationExistsError,
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
    from ckpthooks._callbacks import Callback
    from ckpthooks._checkpointer import Checkpointer, FitResult, RestoreReport
    from ckpthooks._components import StateComponent
    from ckpthooks._distributed import rank_zero_only
    from ckpthooks._hparams import AttributeDict, HyperparametersMixin
    from ckpthooks._io.base import CheckpointIO, CheckpointIOSpec, SaveResult
    from ckpthooks._io.torch_io import TorchCheckpointIO
    from ckpthooks._manifest import CommittedCheckpoint, Manifest
    from ckpthooks._plugin_host import PluginHost, get_plugin_host
    from ckpthooks._policies.milestones import KeepMilestones
    from ckpthooks._policies.model_checkpoint import ModelCheckpoint
    from ckpthooks._retention import Pruner, RetentionRule, TopKRule
    from ckpthooks._store import CheckpointStore

_LAZY = {
    "AttributeDict": "ckpthooks._hparams",
    "Callback": "ckpthooks._callbacks",
    "CheckpointIO": "ckpthooks._io.base",
    "CheckpointIOSpec": "ckpthooks._io.base",
    "CheckpointStore": "ckpthooks._store",
    "Checkpointer": "ckpthooks._checkpointer",
    "CommittedCheckpoint": "ckpthooks._manifest",
    "FitResult": "ckpthooks._checkpointer",
    "HyperparametersMixin": "ckpthooks._hparams",
    "KeepMilestones": "ckpthooks._policies.milestones",
    "Manifest": "ckpthooks._manifest",
    "ModelCheckpoint": "ckpthooks._policies.model_checkpoint",
    "PluginHost": "ckpthooks._plugin_host",
    "Pruner": "ckpthooks._retention",
    "RetentionRule": "ckpthooks._retention",
    "RestoreReport": "ckpthooks._checkpointer",
    "SaveResult": "ckpthooks._io.base",
    "StateComponent": "ckpthooks._components",
    "TopKRule": "ckpthooks._retention",
    "TorchCheckpointIO": "ckpthooks._io.torch_io",
    "get_plugin_host": "ckpthooks._plugin_host",
    "rank_zero_only": "ckpthooks._distributed",
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
    "DestinationExistsError",
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
