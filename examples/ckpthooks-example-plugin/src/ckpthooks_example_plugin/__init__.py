"""ckpthooks-example-plugin: every checkpoint carries the run id, a resume gets it back, and
``ckpthooks runid PATH`` prints the run id of a checkpoint.

It shows the three things most plugins do: contribute a state component
(``register_state_components``), edit the checkpoint (``on_save_checkpoint``) and add a command
to the ``ckpthooks`` command line (``register_cli_commands``). Nothing here imports torch at module
level, so ``ckpthooks plugins`` stays fast with the plugin installed.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

import click

from ckpthooks import StateComponent, hookimpl

if TYPE_CHECKING:
    from ckpthooks import Checkpointer

__version__ = "0.1.0"

#: the component's name: its state lives at checkpoint["ckpthooks"]["components"]["run_id"]
COMPONENT = "run_id"


class RunIdComponent(StateComponent):
    """The run id of an experiment tracker, kept across resumes."""

    name = COMPONENT
    in_weights_only = True  # also in save_weights_only files
    on_missing = "warn"  # a file saved before the plugin was installed still resumes

    def __init__(self) -> None:
        self.value = os.environ.get("RUN_ID") or uuid.uuid4().hex[:12]

    def dump(self, checkpointer: Checkpointer) -> str:
        return self.value  # a plain str: loads with torch.load(weights_only=True)

    def load(self, checkpointer: Checkpointer, state: Any) -> None:
        self.value = str(state)


def run_id(checkpointer: Checkpointer) -> str:
    """The run id of ``checkpointer`` (the restored one after a resume)."""
    for component in checkpointer.components:
        if isinstance(component, RunIdComponent):
            return component.value
    raise LookupError("the ckpthooks-example-plugin is not active for this checkpointer")


@hookimpl
def register_state_components(checkpointer: Checkpointer) -> list[StateComponent]:
    return [RunIdComponent()]  # a new component per checkpointer


@hookimpl
def on_save_checkpoint(checkpointer: Checkpointer, checkpoint: dict[str, Any]) -> None:
    import torch  # here, not at the top: listing plugins must not import torch

    checkpoint["runid_saved_on"] = {
        "host": socket.gethostname(),
        "rank": checkpointer.global_rank,
        "torch": str(torch.__version__),  # TorchVersion is a str subclass: store a plain str
    }


@click.command("runid")
@click.argument("path")
def runid_command(path: str) -> None:
    """Print the run id stored in the checkpoint at PATH."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    value = checkpoint.get("ckpthooks", {}).get("components", {}).get(COMPONENT)
    if value is None:
        raise click.ClickException(f"{path} holds no run id (saved without ckpthooks-example-plugin?)")
    click.echo(value)


@hookimpl
def register_cli_commands() -> list[click.Command]:
    return [runid_command]
