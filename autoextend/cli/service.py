"""``autoextend run``, ``demo`` and ``status``."""

from __future__ import annotations

import click

from autoextend.cli.context import CliContext, pass_ctx


@click.command("run")
@pass_ctx
def run(obj: CliContext) -> None:
    """Run the service (monitor, extender, lease and SPM role as configured)."""
    from autoextend.service import run_service

    run_service(obj.load_settings())


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(obj: CliContext, as_json: bool) -> None:
    """Show what the running service is doing."""
    from autoextend.errors import ServiceNotRunning

    settings = obj.load_settings()
    raise ServiceNotRunning(settings.service.control_socket, "status is not implemented yet")


def register(group: click.Group) -> None:
    group.add_command(run)
    group.add_command(status)
