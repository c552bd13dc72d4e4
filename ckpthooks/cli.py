"""The ``ckpthooks`` command line. It never imports torch just to start, list plugins or show help.

The built-in commands live in :mod:`ckpthooks._cli`, one module each. Plugins add commands through
the :func:`~ckpthooks.hookspecs.register_cli_commands` hook; those are loaded only when a command
that is not built in is asked for, or when the commands are listed (``--help``), and a plugin whose
commands cannot be loaded is reported on stderr without taking the others down.

Exit codes, for every command: 0 success, 1 failure (what failed is printed), 2 bad usage.
"""

from __future__ import annotations

from typing import Any

import click

from ckpthooks._cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from ckpthooks._cli.convert import convert_command
from ckpthooks._cli.copying import copy_command
from ckpthooks._cli.inspection import inspect_command
from ckpthooks._cli.listing import ls_command
from ckpthooks._cli.plugins import plugins_command
from ckpthooks._cli.preempted import preempted_command
from ckpthooks._cli.prune import prune_command
from ckpthooks._cli.verify import verify_command
from ckpthooks._version import __version__

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "main"]

class PluginCommandGroup(click.Group):
    """A click group whose commands are the built-in ones plus those plugins contribute."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugin_commands: dict[str, click.Command] | None = None

    def plugin_commands(self) -> dict[str, click.Command]:
        """Commands from ``register_cli_commands``, loaded once; problems are reported on stderr."""
        if self._plugin_commands is None:
            from ckpthooks._cli.common import plugin_host

            contributed, problems = plugin_host().cli_commands()
            self._plugin_commands = {}
            for plugin_name, command in contributed:
                name = str(command.name)
                if name in self.commands:
                    problems.append(f"plugin {plugin_name!r}: command {name!r} is built in; the plugin's is left out")
                    continue
                self._plugin_commands[name] = command
            for problem in problems:
                click.echo(f"warning: {problem}", err=True)
        return self._plugin_commands

    def reset_plugin_commands(self) -> None:
        """Forget the loaded plugin commands (tests that change the installed plugins use it)."""
        self._plugin_commands = None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.plugin_commands()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is not None:
            return command
        return self.plugin_commands().get(cmd_name)


@click.group(cls=PluginCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpthooks")
def main() -> None:
    """Checkpointing for plain PyTorch training loops: inspect plugins and checkpoints.

    Every command has --help and --json. Exit codes: 0 success, 1 failure (the output says what
    failed), 2 bad usage. Progress bars go to stderr, only when it is a terminal and the work takes
    more than a second (--progress / --no-progress decide otherwise).
    """


for _command in (
    plugins_command,
    inspect_command,
    ls_command,
    verify_command,
    prune_command,
    convert_command,
    copy_command,
    preempted_command,
):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
