"""The ``secretsd`` command.

Exit codes: 0 ok, 1 runtime failure, 2 usage or validation error.
Messages name keys, never values.

This module is the composition root: the core (format) commands live here;
each other concern contributes its commands from its own ``commands.py``,
registered in ``_register`` below.
"""

from __future__ import annotations

import importlib
import sys

import click

from secretsd import __version__
from secretsd.format.commands import core_commands

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="secretsd")
def cli() -> None:
    """Workspace secrets that survive restarts.

    A secrets.d folder holds one file per secret (name = variable, content =
    raw value); load.sh exports them in the workspace's entrypoint. See
    docs/format.md for the contract.
    """


for _cmd in core_commands:
    cli.add_command(_cmd)

# (module, attribute) of each concern's click commands; a missing module is
# skipped so the core CLI works while a concern is being built.
_PLUGINS = [
    ("secretsd.controlplane.commands", "commands"),
    ("secretsd.store.commands", "commands"),
    ("secretsd.runtime.commands", "commands"),
    ("secretsd.templates.commands", "commands"),
]


def _register() -> None:
    for module, attr in _PLUGINS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        for cmd in getattr(mod, attr):
            cli.add_command(cmd)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
