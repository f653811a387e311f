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


# Other concerns' commands, imported only when used so that the core
# commands (which run in workspace boot paths) start fast. Keep in step
# with each package's ``commands.py``.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("secretsd.controlplane.commands", "serve"),
    "rotate-key": ("secretsd.store.commands", "rotate_key"),
    "workspace": ("secretsd.runtime.commands", "workspace"),
    "audit": ("secretsd.templates.commands", "audit"),
    "patch": ("secretsd.templates.commands", "patch"),
    "verify-restart": ("secretsd.acceptance.commands", "verify_restart"),
    "demo": ("secretsd.acceptance.commands", "demo"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in LAZY_COMMANDS:
            module, attr = LAZY_COMMANDS[name]
            cmd = getattr(importlib.import_module(module), attr)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="secretsd")
def cli() -> None:
    """Workspace secrets that survive restarts.

    A secrets.d folder holds one file per secret (name = variable, content =
    raw value); load.sh exports them in the workspace's entrypoint. See
    docs/format.md for the contract.

    Exit codes: 0 ok, 1 runtime failure, 2 usage or validation error;
    `secretsd exec` also 126 (cannot execute) and 127 (not found), like env(1).
    """


for _cmd in core_commands:
    cli.add_command(_cmd)


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
