"""``--config``, ``--log-level`` and ``--log-format``: before or after the subcommand.

``autoextend run --config F`` and ``autoextend --config F run`` mean the same. The options are
declared once here and attached to the top-level group and to every subcommand
(:func:`attach_everywhere`); each stores its value on the shared :class:`CliContext`, so the
one given last on the command line wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from autoextend import settings
from autoextend.cli.context import CliContext

NAMES = ("config_path", "log_level", "log_format")


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value is None or param.name is None:
        return
    if param.name == "config_path":
        # Checked by settings.load() (one line: not found, a directory, unreadable, ...).
        if not value:
            raise click.BadParameter("must not be empty", ctx=ctx, param=param)
        value = Path(value)
    obj = ctx.find_object(CliContext)
    if obj is None:
        obj = ctx.ensure_object(CliContext)
    setattr(obj, param.name, value)


def make_options() -> list[click.Option]:
    """Fresh option objects (click keeps per-command state on them)."""
    return [
        click.Option(
            ["--config", "config_path"], type=str, default=None,
            expose_value=False, callback=_store, is_eager=True, metavar="FILE",
            help=f"Config file (default {settings.DEFAULT_CONFIG_PATH}; built-in defaults if"
                 " that file is absent).",
        ),
        click.Option(
            ["--log-level", "log_level"],
            type=click.Choice(["debug", "info", "warning", "error"]), default=None,
            expose_value=False, callback=_store, is_eager=True,
            help="Override [service] log_level; debug also prints tracebacks of errors.",
        ),
        click.Option(
            ["--log-format", "log_format"], type=click.Choice(["auto", "json", "console"]),
            default=None, expose_value=False, callback=_store, is_eager=True,
            help="Override [service] log_format (logs go to stderr).",
        ),
    ]


def attach_everywhere(command: click.Command) -> None:
    """Give ``command`` and every command below it the common options (once)."""
    present = {p.name for p in command.params}
    if not present.intersection(NAMES):
        command.params.extend(make_options())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach_everywhere(sub)
