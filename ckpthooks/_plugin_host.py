"""The plugin host: owns the pluggy ``PluginManager`` and is the only caller of hooks.

The rest of ckpthooks talks to plugins through the typed methods of :class:`PluginHost`, never through
``pm.hook.*``. Every hook, contribution hooks included, is called through pluggy (so ``tryfirst``,
``trylast``, tracing and hook-call monitoring apply); a contribution hook is called one plugin at a
time (:meth:`PluginManager.subset_hook_caller`) so that each contribution is attributed to its
plugin. Built-in plugins are registered first, exactly like external ones; then the
``ckpthooks`` entry points are loaded one at a time, so that one broken plugin is recorded (and
reported by ``ckpthooks plugins``) instead of taking the host down.

Environment variables:

``CKPTHOOKS_STRICT_PLUGINS=1``
    A plugin that fails to import or register raises :class:`~ckpthooks.exceptions.PluginLoadError`.
``CKPTHOOKS_PLUGINS_ALLOW=a,b``
    Load only these entry-point plugins (built-in plugins are always loaded unless blocked).
``CKPTHOOKS_PLUGINS_BLOCK=c,d``
    Never load these plugins; built-in plugin names may be blocked too (to replace one), except the
    essential ones (:data:`ESSENTIAL_PLUGINS`): blocking one raises :class:`ConfigurationError` when
    the host is built.
``CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD=1``
    Load no entry-point plugins at all.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pluggy

from ckpthooks import _distributed as distributed
from ckpthooks import hookspecs
from ckpthooks._version import __version__
from ckpthooks.exceptions import (
    ConfigurationError,
    DuplicateContributionError,
    PluginError,
    PluginLoadError,
)

if TYPE_CHECKING:
    import click

    from ckpthooks._callbacks import Callback
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._components import StateComponent
    from ckpthooks._distributed import DistributedContext
    from ckpthooks._io.base import CheckpointIO, CheckpointIOSpec, SaveResult
    from ckpthooks._io.hashing import HashingWriter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

#: Built-in plugins, in registration order: (plugin name, module).
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("builtin-state", "ckpthooks._builtin.state"),
    ("builtin-policies", "ckpthooks._builtin.policies"),
    ("builtin-storage", "ckpthooks._builtin.storage"),
    ("builtin-lightning", "ckpthooks._builtin.lightning"),
)

#: Built-in plugins that cannot be blocked: ``builtin-storage`` holds the last-resort storage hooks
#: every save, load and delete ends in. Replace the default backend instead (a plugin whose
#: ``register_checkpoint_io`` spec serves the same protocols with a higher priority).
ESSENTIAL_PLUGINS: frozenset[str] = frozenset({"builtin-storage"})

#: Contribution hooks whose names are checked against the registered plugins' at registration
#: (they take no argument); the others depend on the checkpointer and are checked when one is built.
_CHECKED_AT_REGISTRATION: dict[str, tuple[str, Callable[[Any], str]]] = {
    "register_checkpoint_io": ("storage backend", lambda spec: str(spec.name)),
}

Source = Literal["builtin", "entrypoint", "manual"]
T = TypeVar("T")


class PluginLoadWarning(UserWarning):
    """A plugin failed to load and was skipped (see ``ckpthooks plugins``)."""


@dataclass(frozen=True)
class PluginInfo:
    """What ``ckpthooks plugins`` reports about one plugin."""

    name: str
    source: Source
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    hooks: tuple[str, ...] = ()
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "hooks": list(self.hooks),
            "active": self.active,
            "error": self.error,
        }


def _env_names(variable: str) -> set[str] | None:
    raw = os.environ.get(variable)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _env_flag(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class _Registered:
    info: PluginInfo
    order: tuple[int, str]


@dataclass
class PluginHost:
    """A pluggy plugin manager with the built-in plugins, the entry points and a typed facade.

    Create one with :func:`get_plugin_host` (the shared, lazily built host) or directly in tests.
    """

    load_entry_points: bool = True
    strict: bool | None = None
    allow: set[str] | None = None
    block: set[str] | None = None
    load_builtins: bool = True
    pm: pluggy.PluginManager = field(init=False)
    _registered: dict[str, _Registered] = field(init=False, default_factory=dict)
    _failures: dict[str, PluginInfo] = field(init=False, default_factory=dict)
    _io_cache: dict[str, CheckpointIO] = field(init=False, default_factory=dict)
    #: the ``distributed_context`` answer, once it is final (see :meth:`distributed_context`)
    _context_cache: tuple[DistributedContext | None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.strict is None:
            self.strict = _env_flag("CKPTHOOKS_STRICT_PLUGINS")
        if self.allow is None:
            self.allow = _env_names("CKPTHOOKS_PLUGINS_ALLOW")
        if self.block is None:
            self.block = _env_names("CKPTHOOKS_PLUGINS_BLOCK") or set()
        if _env_flag("CKPTHOOKS_DISABLE_PLUGIN_AUTOLOAD"):
            self.load_entry_points = False
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        essential = sorted(ESSENTIAL_PLUGINS & self.block) if self.load_builtins else []
        if essential:
            raise ConfigurationError(
                f"built-in plugin {essential[0]!r} is essential and cannot be blocked (it holds the "
                "last-resort storage hooks every save, load and delete ends in). To replace the default "
                "torch backend, install or register a plugin whose register_checkpoint_io spec serves the "
                "same protocols with a higher priority, or pass checkpoint_io= to the Checkpointer; "
                f"remove {essential[0]!r} from CKPTHOOKS_PLUGINS_BLOCK"
            )
        if self.load_builtins:
            for index, (name, module) in enumerate(BUILTIN_PLUGINS):
                if name in self.block:
                    log.info("built-in plugin %s is blocked", name)
                    continue
                self._register(importlib.import_module(module), name, "builtin", order=(0, f"{index:03d}"))
        if self.load_entry_points:
            self._load_entry_points()

    # ----------------------------------------------------------------- registration

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object by hand (for tests and programmatic use); returns its name."""
        plugin_name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin):x}"
        self._register(plugin, plugin_name, "manual", order=(2, plugin_name))
        return plugin_name

    def unregister(self, name: str) -> None:
        """Remove a plugin registered under ``name``."""
        if name not in self._registered:
            raise PluginError(f"no plugin named {name!r} is registered")
        self.pm.unregister(name=name)
        del self._registered[name]
        self._io_cache.clear()
        self._context_cache = None

    def _register(
        self,
        plugin: object,
        name: str,
        source: Source,
        *,
        order: tuple[int, str],
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        if name in self._registered:
            raise PluginError(f"a plugin named {name!r} is already registered")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # pluggy registers nothing of it then
            raise PluginError(f"plugin {name!r} does not match the hook specification: {exc}") from exc
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(name=name)
            raise PluginError(f"plugin {name!r} implements an unknown hook: {exc}") from exc
        callers = self.pm.get_hookcallers(plugin) or []
        for caller in callers:
            wrapped = [i for i in caller.get_hookimpls() if i.plugin is plugin and (i.wrapper or i.hookwrapper)]
            if caller.name.startswith("register_") and wrapped:
                self.pm.unregister(name=name)
                raise PluginError(
                    f"plugin {name!r}: {caller.name} is a contribution hook; it cannot be a wrapper "
                    "(return your contributions instead)"
                )
        try:
            self._check_contribution_names(plugin, name)
        except PluginError:
            self.pm.unregister(name=name)
            raise
        hooks = tuple(sorted(caller.name for caller in callers))
        if source == "builtin":
            distribution, version = hookspecs.PROJECT_NAME, __version__
        info = PluginInfo(
            name=name,
            source=source,
            distribution=distribution,
            version=version,
            module=getattr(plugin, "__name__", type(plugin).__name__),
            hooks=hooks,
        )
        self._registered[name] = _Registered(info=info, order=order)
        self._io_cache.clear()
        self._context_cache = None

    def _load_entry_points(self) -> None:
        entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        for ep in entry_points:
            if ep.name in (self.block or set()):
                log.info("plugin %s is blocked by CKPTHOOKS_PLUGINS_BLOCK", ep.name)
                continue
            if self.allow is not None and ep.name not in self.allow:
                log.info("plugin %s is not in CKPTHOOKS_PLUGINS_ALLOW", ep.name)
                continue
            if ep.name in self._registered:
                continue  # the same entry point seen twice (duplicate distributions on sys.path)
            dist = getattr(ep, "dist", None)
            dist_name = getattr(dist, "name", None)
            dist_version = getattr(dist, "version", None)
            try:
                plugin = ep.load()
                self._register(
                    plugin,
                    ep.name,
                    "entrypoint",
                    order=(1, ep.name),
                    distribution=dist_name,
                    version=dist_version,
                )
            except Exception as exc:  # one broken plugin must not stop the host
                if self.strict:
                    if isinstance(exc, DuplicateContributionError):
                        raise
                    raise PluginLoadError(ep.name, exc) from exc
                message = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
                self._failures[ep.name] = PluginInfo(
                    name=ep.name,
                    source="entrypoint",
                    distribution=dist_name,
                    version=dist_version,
                    module=ep.value,
                    error=message,
                )
                warnings.warn(
                    f"ckpthooks: plugin {ep.name!r} failed to load and is skipped ({message})",
                    PluginLoadWarning,
                    stacklevel=2,
                )

    # ----------------------------------------------------------------- introspection

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin, then every plugin that failed to load, in hook-call order."""
        ordered = sorted(self._registered.values(), key=lambda r: r.order)
        return [r.info for r in ordered] + sorted(self._failures.values(), key=lambda i: i.name)

    @property
    def failures(self) -> list[PluginInfo]:
        return sorted(self._failures.values(), key=lambda i: i.name)

    def plugin_versions(self) -> dict[str, str | None]:
        """Name -> version of every active plugin (recorded in checkpoints and manifests)."""
        return {info.name: info.version for info in self.plugins() if info.active}

    # ----------------------------------------------------------------- calling contribution hooks

    def _check_contribution_names(self, plugin: object, plugin_name: str) -> None:
        """Raise :class:`DuplicateContributionError` when the just registered ``plugin`` contributes
        a name (a storage backend's) that an already registered plugin contributes too."""
        for hook_name, (kind, key) in _CHECKED_AT_REGISTRATION.items():
            impls = getattr(self.pm.hook, hook_name).get_hookimpls()
            if not any(impl.plugin is plugin for impl in impls):
                continue
            owners: dict[str, str] = {}
            for owner, contribution in self._call_each(hook_name):
                if owner == plugin_name or not isinstance(contribution, Sequence):
                    continue  # a malformed contribution is reported where it is used
                for item in contribution:
                    owners.setdefault(key(item), owner)
            for _, contribution in self._call_each(hook_name, only=plugin):
                if not isinstance(contribution, Sequence):
                    continue
                for item in contribution:
                    if key(item) in owners:
                        raise DuplicateContributionError(kind, key(item), owners[key(item)], plugin_name)

    def _contribution_order(self, impl: pluggy.HookImpl) -> tuple[int, tuple[int, str]]:
        """``tryfirst`` implementations first, ``trylast`` ones last, each group in plugin order."""
        rank = 0 if impl.tryfirst else 2 if impl.trylast else 1
        return rank, self._order_of(impl.plugin_name)

    def _call_each(self, hook_name: str, only: object | None = None, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of a contribution hook through pluggy, one plugin at a time,
        in the deterministic order (:meth:`_contribution_order`); ``(plugin name, result)`` for
        each result that is not ``None``. ``only`` restricts the call to that plugin object."""
        caller = getattr(self.pm.hook, hook_name)
        impls = sorted(caller.get_hookimpls(), key=self._contribution_order)
        plugins = self.pm.get_plugins()
        results: list[tuple[str, Any]] = []
        for impl in impls:
            if only is not None and impl.plugin is not only:
                continue
            others = {plugin for plugin in plugins if plugin is not impl.plugin}
            contributed = self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
            # a contribution hook is not firstresult: pluggy returns the non-None results in a list
            for result in contributed:
                results.append((impl.plugin_name, result))
        return results

    def _order_of(self, name: str) -> tuple[int, str]:
        registered = self._registered.get(name)
        return registered.order if registered else (3, name)

    def _collect_named(
        self, kind: str, hook_name: str, key: Callable[[Any], str], **kwargs: Any
    ) -> list[tuple[str, Any]]:
        seen: dict[str, str] = {}
        items: list[tuple[str, Any]] = []
        for plugin_name, contribution in self._call_each(hook_name, **kwargs):
            if not isinstance(contribution, Sequence):
                raise PluginError(
                    f"plugin {plugin_name!r}: hook {hook_name} must return a sequence, "
                    f"not {type(contribution).__name__}"
                )
            for item in contribution:
                item_name = key(item)
                if item_name in seen:
                    raise DuplicateContributionError(kind, item_name, seen[item_name], plugin_name)
                seen[item_name] = plugin_name
                items.append((plugin_name, item))
        return items

    def state_components(self, checkpointer: Checkpointer) -> list[tuple[str, StateComponent]]:
        """``(plugin name, component)`` pairs from :func:`~ckpthooks.hookspecs.register_state_components`."""
        return self._collect_named(
            "state component",
            "register_state_components",
            lambda c: str(c.name),
            checkpointer=checkpointer,
        )

    def policies(self, checkpointer: Checkpointer) -> list[tuple[str, Callback]]:
        """``(plugin name, callback)`` pairs from :func:`~ckpthooks.hookspecs.register_policies`."""
        return self._collect_named(
            "policy", "register_policies", lambda c: str(c.state_key), checkpointer=checkpointer
        )

    def checkpoint_io_specs(self) -> list[tuple[str, CheckpointIOSpec]]:
        """``(plugin name, spec)`` pairs from :func:`~ckpthooks.hookspecs.register_checkpoint_io`."""
        return self._collect_named("storage backend", "register_checkpoint_io", lambda s: str(s.name))

    def cli_commands(self) -> tuple[list[tuple[str, click.Command]], list[str]]:
        """``(plugin name, command)`` pairs from :func:`~ckpthooks.hookspecs.register_cli_commands`,
        and one line per plugin whose contribution was left out.

        Unlike the other contribution hooks, a failing plugin is not fatal here: a broken command
        must not take the rest of the command line down. In strict mode
        (``CKPTHOOKS_STRICT_PLUGINS=1``) the first problem raises :class:`PluginError` instead.
        """
        import click

        caller = self.pm.hook.register_cli_commands
        impls = sorted(caller.get_hookimpls(), key=self._contribution_order)
        commands: list[tuple[str, click.Command]] = []
        owners: dict[str, str] = {}
        problems: list[str] = []
        for impl in impls:
            plugin_name = impl.plugin_name
            try:
                contributed = self._call_each("register_cli_commands", only=impl.plugin)
                if not contributed:
                    continue
                result = contributed[0][1]
                if not isinstance(result, Sequence) or not all(isinstance(c, click.Command) for c in result):
                    raise PluginError(
                        f"register_cli_commands must return a sequence of click.Command, not {result!r}"
                    )
                names = [str(command.name) for command in result]
                for name in names:
                    if name in owners:
                        raise DuplicateContributionError("command", name, owners[name], plugin_name)
                if len(set(names)) != len(names):
                    raise PluginError(f"register_cli_commands returned the same command name twice: {names}")
            except Exception as exc:  # one broken plugin must not take the command line down
                message = " ".join(f"{type(exc).__name__}: {exc}".split())
                if self.strict:
                    raise PluginError(f"plugin {plugin_name!r}: {message}") from exc
                problems.append(f"plugin {plugin_name!r}: its commands are left out ({message})")
                continue
            for command in result:
                owners[str(command.name)] = plugin_name
                commands.append((plugin_name, command))
        return commands, problems

    def checkpoint_io_for(self, path: str) -> CheckpointIO:
        """The storage backend for ``path``: the highest-priority spec serving its protocol."""
        from ckpthooks._io.paths import protocol_of

        protocol = protocol_of(path)
        cached = self._io_cache.get(protocol)
        if cached is not None:
            return cached
        candidates = [
            (spec.priority, -index, spec)
            for index, (_, spec) in enumerate(self.checkpoint_io_specs())
            if protocol in spec.protocols or "*" in spec.protocols
        ]
        if not candidates:
            raise ConfigurationError(
                f"no storage backend serves {protocol!r} URLs such as {path!r}; install a plugin "
                "that does, or pass checkpoint_io= to the Checkpointer"
            )
        spec = max(candidates, key=lambda c: (c[0], c[1]))[2]
        io = spec.factory()
        self._io_cache[protocol] = io
        return io

    def distributed_context(self) -> DistributedContext | None:
        """The context a plugin supplies through :func:`~ckpthooks.hookspecs.distributed_context`.

        :mod:`ckpthooks._distributed` asks only when ``torch.distributed`` is not initialized. A
        context, once returned, is kept until a plugin is registered or unregistered; so is
        ``None`` when no plugin implements the hook. When implementations exist but all return
        ``None`` (their runtime is not in use yet), they are asked again next time.
        """
        if self._context_cache is not None:
            return self._context_cache[0]
        caller = self.pm.hook.distributed_context
        context: DistributedContext | None = caller()
        if context is not None or not caller.get_hookimpls():
            self._context_cache = (context,)
        return context

    # ----------------------------------------------------------------- calling edit and storage hooks

    def on_save_checkpoint(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
        self.pm.hook.on_save_checkpoint(checkpointer=checkpointer, checkpoint=checkpoint)

    def on_load_checkpoint(self, checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
        self.pm.hook.on_load_checkpoint(checkpointer=checkpointer, checkpoint=checkpoint)

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str,
        storage_options: Mapping[str, Any] | None,
        checkpoint_io: CheckpointIO,
    ) -> SaveResult | None:
        result: SaveResult | None = self.pm.hook.save_checkpoint(
            checkpoint=checkpoint,
            path=path,
            storage_options=storage_options,
            checkpoint_io=checkpoint_io,
        )
        return result

    def load_checkpoint(
        self,
        path: str,
        storage_options: Mapping[str, Any] | None,
        checkpoint_io: CheckpointIO,
        map_location: Any = None,
        weights_only: bool = True,
    ) -> dict[str, Any]:
        result: dict[str, Any] | None = self.pm.hook.load_checkpoint(
            path=path,
            storage_options=storage_options,
            checkpoint_io=checkpoint_io,
            map_location=map_location,
            weights_only=weights_only,
        )
        if result is None:
            raise PluginError(f"no storage hook loaded {path!r} (is the built-in storage plugin blocked?)")
        return result

    def write_checkpoint_bytes(
        self,
        path: str,
        serialize: Callable[[HashingWriter], object],
        storage_options: Mapping[str, Any] | None,
        checkpoint_io: CheckpointIO,
        checksum_algorithm: str | None = None,
    ) -> SaveResult:
        result: SaveResult | None = self.pm.hook.write_checkpoint_bytes(
            path=path,
            serialize=serialize,
            storage_options=storage_options,
            checkpoint_io=checkpoint_io,
            checksum_algorithm=checksum_algorithm,
        )
        if result is None:
            raise PluginError(f"no storage hook wrote {path!r} (is the built-in storage plugin blocked?)")
        return result

    def remove_checkpoint(
        self, path: str, storage_options: Mapping[str, Any] | None, checkpoint_io: CheckpointIO
    ) -> None:
        handled = self.pm.hook.remove_checkpoint(
            path=path, storage_options=storage_options, checkpoint_io=checkpoint_io
        )
        if handled is None:
            raise PluginError(f"no storage hook removed {path!r} (is the built-in storage plugin blocked?)")


_host: PluginHost | None = None
_host_lock = threading.Lock()


def get_plugin_host() -> PluginHost:
    """The shared plugin host, built on first use (``import ckpthooks`` loads no plugin)."""
    global _host
    if _host is None:
        with _host_lock:
            if _host is None:
                _host = PluginHost()
    return _host


# ckpthooks._distributed asks the shared host for a plugin's context when it is given no host
distributed.set_default_context_source(get_plugin_host)


def set_plugin_host(host: PluginHost | None) -> PluginHost | None:
    """Replace the shared host (``None`` rebuilds it on next use); returns the previous one."""
    global _host
    with _host_lock:
        previous, _host = _host, host
    return previous
