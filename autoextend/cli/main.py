"""Entry point: ``autoextend [--config F] [--log-level L] [--log-format F] COMMAND``.

The three options are accepted after the subcommand too (``autoextend run --config F``).
User mistakes (bad config, bad arguments) print one line and exit 2; failures of the
environment print one line and exit 1 (see :mod:`autoextend.cli.errors`). Tracebacks appear
only with ``--log-level debug``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from autoextend import __version__, settings
from autoextend.cli.context import CliContext, pass_ctx
from autoextend.cli.errors import report
from autoextend.cli.options import attach_everywhere

EPILOG = """\b
Options --config, --log-level and --log-format may also follow the command:
  autoextend run --config /etc/autoextend/pool.toml --log-level debug

\b
Exit codes: 0 ok; 1 the environment failed (a port in use, a missing lease area,
the service not running); 2 the config file or the command line is wrong. Either
way the error is one line on stderr; --log-level debug adds the traceback.

\b
Shell completion (bash; zsh and fish alike with zsh_source / fish_source):
  eval "$(_AUTOEXTEND_COMPLETE=bash_source autoextend)"
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EPILOG)
@click.version_option(__version__, prog_name="autoextend")
def cli() -> None:
    """Keep thin-provisioned VM disks on shared block storage from running out of space."""


@cli.group("config", epilog="""\b
Examples:
  autoextend config check                          # the default file
  autoextend config check --config ./pool.toml     # exit 2 and one line if unusable
  autoextend --config ./pool.toml config show > effective.toml
  autoextend config reload                         # like SIGHUP; may be held back
  autoextend config reload --confirm               # apply a held-back reload
""")
def config_group() -> None:
    """Inspect and validate the configuration.

    The config is one TOML file (default /etc/autoextend/autoextend.toml; the built-in
    defaults when that file is absent). config/autoextend.toml in the source tree documents
    every key with its default and the reason for it.
    """


@config_group.command("show")
@pass_ctx
def config_show(obj: CliContext) -> None:
    """Print the effective configuration (the file merged over the defaults) as TOML.

    Keys left unset (no TOML form) are left out. The output is a valid config file.
    """
    click.echo(settings.dump_toml(obj.load_settings()), nl=False)


@config_group.command("check")
@click.option("--live", is_flag=True,
              help="Also state what each failure (path loss, SPM crash, VG full, array full) "
                   "does with this host's timeouts; exit 1 if one ends in a guest-visible error.")
@click.option("--multipath-config",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --live: read this multipath.conf instead of `multipath -t`.")
@click.option("--guest-io-timeout", type=click.FloatRange(min=1, max=86400),
              help="With --live: the guests' own I/O timeout in seconds (Linux SCSI/SATA "
                   "disks 30, Windows 60; virtio-blk has none, the default).")
@click.option("--path-loss", type=click.FloatRange(min=1, max=86400), multiple=True,
              help="With --live: a path-loss duration to evaluate, in seconds (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="With --live: the outcomes as JSON.")
@pass_ctx
def config_check(obj: CliContext, live: bool, multipath_config: Path | None,
                 guest_io_timeout: float | None, path_loss: tuple[float, ...],
                 as_json: bool) -> None:
    """Validate the config file with every rule `autoextend run` applies.

    Checks each key's type and range, NUL bytes and byte lengths of paths and names, and the
    rules across sections (volumes.backend = "lvm" needs lvm.pvs; service.extender =
    "mailbox" needs lease.path, lease.host_id and lvm.vgs; ...). Prints "config ok" and exits
    0, or prints one line naming every problem and exits 2: the same line `autoextend run`
    prints for that file. What the machine must provide (the lease area, free ports) is
    checked when the service starts (exit 1).

    With --live it also reads this host's multipath queueing (no_path_retry x
    polling_interval, from `multipath -t`, or --multipath-config) and states what a path
    loss, an SPM crash, a full VG and a full array do with these timeouts: I/O queued, VMs
    paused and resumed, host fenced, or an error the guest sees (a RISK line, exit 1).
    """
    from autoextend.cli import reloading

    new = obj.load_service_settings()
    if live:
        from autoextend.cli import livecheck

        livecheck.report(new, livecheck.read_multipath(multipath_config), guest_io_timeout,
                         path_loss, as_json)
        return
    click.echo("config ok")
    reloading.compare_with_running(new, obj.loaded_raw, obj.config_source)


@config_group.command("reload")
@click.option("--confirm", is_flag=True,
              help="Apply the file even if the reload would be held back.")
@pass_ctx
def config_reload(obj: CliContext, confirm: bool) -> None:
    """Ask the running service to re-read its config file (what SIGHUP does).

    A file that looks half-written (a key it no longer sets would fall back to its default,
    or a [policy] number would move by more than service.reload_max_factor) is held back:
    the running config stays, the changes are printed and the exit code is 1. Check the
    file, then confirm with --confirm (or send SIGHUP again with the same file content).
    An invalid file is refused (exit 1); the running config stays.
    """
    from autoextend.cli import reloading

    reloading.reload(obj.load_settings().service.control_socket, confirm)


def _register_commands() -> None:
    from autoextend.cli import journal, lab, lease, pool, service, spm, volume

    service.register(cli)
    cli.add_command(journal.journal)
    cli.add_command(lab.lab)
    cli.add_command(lease.lease)
    cli.add_command(spm.spm)
    cli.add_command(pool.pool)
    cli.add_command(volume.volume)
    attach_everywhere(cli)


_register_commands()


def _argv_debug(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        if arg == "--log-level=debug" or (arg == "--log-level" and argv[i + 1:i + 2] == ["debug"]):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    obj = CliContext()
    try:
        rv = cli.main(args=args, prog_name="autoextend", standalone_mode=False, obj=obj)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (Exception, KeyboardInterrupt, BaseExceptionGroup) as exc:  # the one error path
        return report(exc, debug=obj.debug or _argv_debug(args))
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
