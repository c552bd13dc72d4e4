"""The one exception hierarchy of ckpthooks.

Every failure ckpthooks reports on purpose is a :class:`CheckpointError`, so ``except CheckpointError``
catches all of them. Each subclass names one kind of problem; its message says what is wrong and what
to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigurationError",
    "CorruptCheckpointError",
    "DistributedCheckpointError",
    "DuplicateContributionError",
    "IncompatibleFormatError",
    "IncompatibleStateError",
    "MissingStateError",
    "PluginError",
    "PluginLoadError",
    "StorageError",
    "UnexpectedStateError",
    "UnsafeCheckpointError",
    "UnsafeStateError",
]


class CheckpointError(Exception):
    """Root of every error ckpthooks raises on purpose."""


class ConfigurationError(CheckpointError, ValueError):
    """An argument or option is invalid (bad value, bad combination, bad filename template)."""


class PluginError(CheckpointError):
    """A plugin misbehaves: it cannot be loaded, or it contradicts another plugin."""


class PluginLoadError(PluginError):
    """An entry-point plugin failed to import or register (raised in strict mode only)."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name = name
        self.error = error
        super().__init__(
            f"plugin {name!r} failed to load: {type(error).__name__}: {error}. "
            "Uninstall or fix it, or block it with CKPTHOOKS_PLUGINS_BLOCK."
        )


class DuplicateContributionError(PluginError):
    """Two plugins contributed something under the same name."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind = kind
        self.name = name
        self.plugins = (first, second)
        super().__init__(
            f"{kind} {name!r} is contributed by both plugin {first!r} and plugin {second!r}; "
            "block one of them with CKPTHOOKS_PLUGINS_BLOCK or rename the contribution."
        )


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint matches the request (a path that does not exist, or no committed "last"/"best")."""


class DestinationExistsError(ConfigurationError, FileExistsError):
    """A write would replace an existing file or folder that it was not told to replace (``ckpthooks
    copy`` and ``convert`` without ``--overwrite``); also a ``FileExistsError``."""


class StorageError(CheckpointError, OSError):
    """Moving bytes to or from storage failed (write, fsync, rename, delete, permissions)."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint's bytes are not what was committed: truncated, altered or not a checkpoint."""


class IncompatibleFormatError(CheckpointError):
    """The checkpoint (or its manifest) was written by a newer ckpthooks, in a format this version
    cannot read: upgrade ckpthooks."""


class UnsafeCheckpointError(CheckpointError):
    """Loading the file would need unpickling arbitrary Python objects, which is off by default."""


class UnsafeStateError(CheckpointError, TypeError):
    """Saving would write an object that cannot be loaded with ``torch.load(weights_only=True)``."""


class _StateMismatchError(CheckpointError, KeyError):
    def __init__(self, message: str, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class MissingStateError(_StateMismatchError):
    """The checkpoint lacks state for something being restored (a weights-only file, a new optimizer)."""


class UnexpectedStateError(_StateMismatchError):
    """The checkpoint holds state that nothing being restored can take (a removed optimizer, a plugin
    that is no longer installed)."""


class IncompatibleStateError(CheckpointError):
    """State was found but does not fit what it is restored into (a tensor of another shape, an
    optimizer with other parameter groups)."""


class DistributedCheckpointError(CheckpointError):
    """A collective checkpoint operation failed on some rank; every rank raises this."""
