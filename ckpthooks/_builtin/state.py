"""Built-in plugin: the training-state components (model, optimizers, schedulers, ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ckpthooks.hookspecs import hookimpl

if TYPE_CHECKING:
    from ckpthooks._checkpointer import Checkpointer
    from ckpthooks._components import StateComponent


@hookimpl
def register_state_components(checkpointer: Checkpointer) -> Sequence[StateComponent]:
    from ckpthooks._components import builtin_components

    return builtin_components()
