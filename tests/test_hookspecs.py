"""The hook specification is the plugin authors' reference: complete, typed and documented."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import pluggy
import pytest

from ckpthooks import hookspecs

EXPECTED_HOOKS = {
    "on_save_checkpoint",
    "on_load_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "remove_checkpoint",
    "write_checkpoint_bytes",
    "register_state_components",
    "register_policies",
    "register_checkpoint_io",
    "register_cli_commands",
    "distributed_context",
}
FIRST_RESULT_HOOKS = {
    "save_checkpoint", "load_checkpoint", "remove_checkpoint", "write_checkpoint_bytes", "distributed_context",
}


def _hookspecs() -> dict[str, Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        name: value
        for name, value in vars(hookspecs).items()
        if callable(value) and getattr(value, marker, None) is not None
    }


SPECS = _hookspecs()


def _opts(function: Callable[..., Any]) -> dict[str, Any]:
    opts: dict[str, Any] = getattr(function, f"{hookspecs.PROJECT_NAME}_spec")
    return opts


def test_the_documented_hooks_exist() -> None:
    assert set(SPECS) == EXPECTED_HOOKS


def test_only_storage_hooks_and_the_distributed_context_stop_at_the_first_result() -> None:
    assert {name for name, fn in SPECS.items() if _opts(fn)["firstresult"]} == FIRST_RESULT_HOOKS
    assert not any(_opts(fn)["historic"] for fn in SPECS.values())


def test_markers_belong_to_the_ckpthooks_project() -> None:
    assert isinstance(hookspecs.hookimpl, pluggy.HookimplMarker)
    assert hookspecs.hookimpl.project_name == "ckpthooks"
    assert hookspecs.hookspec.project_name == "ckpthooks"


@pytest.mark.parametrize("name", sorted(EXPECTED_HOOKS))
def test_hook_docstring_says_what_which_ranks_and_whether_first_result_wins(name: str) -> None:
    doc = inspect.getdoc(SPECS[name]) or ""
    assert len(doc) > 80, f"{name}: the docstring is too short to be a reference"
    assert "rank" in doc, f"{name}: the docstring must say which ranks call the hook"
    if name in FIRST_RESULT_HOOKS:
        assert "first result wins" in doc
    else:
        assert "first result wins" not in doc
    assert re.search(r"\breturn", doc, re.IGNORECASE), f"{name}: the return value is not described"


@pytest.mark.parametrize("name", sorted(EXPECTED_HOOKS))
def test_every_hook_parameter_is_named_in_the_docstring(name: str) -> None:
    doc = inspect.getdoc(SPECS[name]) or ""
    undocumented = [
        parameter
        for parameter in inspect.signature(SPECS[name]).parameters
        if not re.search(rf"\b{parameter}\b", doc)
    ]
    assert undocumented == [], f"{name}: parameters not described in the docstring: {undocumented}"


@pytest.mark.parametrize("name", sorted(EXPECTED_HOOKS))
def test_every_parameter_and_the_return_value_are_annotated(name: str) -> None:
    signature = inspect.signature(SPECS[name])
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}({parameter.name})"
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert parameter.default is inspect.Parameter.empty  # pluggy passes every argument by name
    assert signature.return_annotation is not inspect.Signature.empty, name


@pytest.mark.parametrize("name", sorted(EXPECTED_HOOKS))
def test_annotations_resolve_to_the_real_runtime_types(name: str) -> None:
    import click

    from ckpthooks._callbacks import Callback
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._components import StateComponent
    from ckpthooks._distributed import DistributedContext
    from ckpthooks._io.base import CheckpointIO, CheckpointIOSpec, SaveResult
    from ckpthooks._io.hashing import HashingWriter

    namespace = {
        "HashingWriter": HashingWriter,
        "click": click,
        "DistributedContext": DistributedContext,
        "Callback": Callback,
        "Checkpointer": Checkpointer,
        "StateComponent": StateComponent,
        "CheckpointIO": CheckpointIO,
        "CheckpointIOSpec": CheckpointIOSpec,
        "SaveResult": SaveResult,
    }
    hints = typing.get_type_hints(SPECS[name], localns=namespace)
    assert set(hints) == {*inspect.signature(SPECS[name]).parameters, "return"}


def test_storage_hooks_return_optional_results() -> None:
    # None must be a valid result, otherwise an implementation could not pass
    for name in FIRST_RESULT_HOOKS:
        assert "None" in str(inspect.signature(SPECS[name]).return_annotation), name


def test_the_module_documents_the_entry_point_group_and_the_ordering_rule() -> None:
    doc = hookspecs.__doc__ or ""
    assert "[project.entry-points.ckpthooks]" in doc
    assert "built-in plugins first" in doc
    assert "DuplicateContributionError" in doc


def test_every_hook_is_known_to_a_fresh_plugin_host() -> None:
    from ckpthooks._plugin_host import PluginHost

    host = PluginHost(load_entry_points=False)
    for name in EXPECTED_HOOKS:
        caller = getattr(host.pm.hook, name)
        assert caller.has_spec()
        assert caller.spec.opts["firstresult"] is (name in FIRST_RESULT_HOOKS)
