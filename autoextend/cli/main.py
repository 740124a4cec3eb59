"""Entry point: ``autoextend [--config F] [--log-level L] [--log-format F] COMMAND``.

User mistakes (bad config, bad arguments) print one line and exit 2; runtime failures print
one line and exit 1. Tracebacks appear only with ``--log-level debug``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from autoextend import __version__, settings
from autoextend.cli.context import CliContext, pass_ctx
from autoextend.errors import AutoextendError, ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="autoextend")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help=f"Config file (default {settings.DEFAULT_CONFIG_PATH}; built-in defaults if absent).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None
)
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]), default=None)
@click.pass_context
def cli(
    ctx: click.Context, config_path: Path | None, log_level: str | None, log_format: str | None
) -> None:
    """Keep thin-provisioned VM disks on shared block storage from running out of space."""
    ctx.obj = CliContext(config_path, log_level, log_format)


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@pass_ctx
def config_show(obj: CliContext) -> None:
    """Print the effective configuration (file merged over defaults) as TOML."""
    click.echo(settings.dump_toml(obj.load_settings()), nl=False)


@config_group.command("check")
@pass_ctx
def config_check(obj: CliContext) -> None:
    """Validate the config file; exit 2 with the problems if it is not usable."""
    obj.load_settings()
    click.echo("config ok")


def _register_commands() -> None:
    from autoextend.cli import lab, lease, service, spm

    service.register(cli)
    cli.add_command(lab.lab)
    cli.add_command(lease.lease)
    cli.add_command(spm.spm)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    debug = "--log-level" in (argv or sys.argv) and "debug" in (argv or sys.argv)
    try:
        rv = cli.main(args=argv, prog_name="autoextend", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except ConfigError as exc:
        click.echo(f"autoextend: config error: {exc}", err=True)
        return 2
    except AutoextendError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"autoextend: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
