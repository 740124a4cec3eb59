"""``autoextend spm``: who holds the SPM role, and moving it (talks to the running service)."""

from __future__ import annotations

from typing import Any

import anyio
import click

from autoextend.cli.context import CliContext, echo_reply, pass_ctx


@click.group("spm")
def spm() -> None:
    """Storage Pool Manager role: inspect and move it."""


def _render(info: dict[str, Any] | None) -> str:
    if info is None:
        return "this host runs in local mode (no SPM role)"
    lines = [
        f"SPM: host {info.get('spm_host_id') or 'none'} (lver {info.get('spm_lver')}),"
        f" lease engine {info.get('engine', 'native')}",
        f"this host: {info['host_id']}{' (SPM)' if info.get('is_spm') else ''},"
        f" lease {info['lease_health']}, last renewal {info.get('last_renewal_age_s')} s ago",
    ]
    for host, peer in sorted(info.get("hosts", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"  host {host:>4} {peer['state']:<8} {peer['name']}"
                     f" (silent {peer['silent_s']} s)")
    return "\n".join(lines)


@spm.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def spm_status(obj: CliContext, as_json: bool) -> None:
    """Which host is SPM, this host's lease health, and the other hosts' liveness."""
    from autoextend import control

    settings = obj.load_settings()
    path = settings.service.control_socket
    result = anyio.run(control.call_dict, path, "status")
    echo_reply(path, result.get("spm"), _render, as_json)


@spm.command("step-down")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 3600), default=60.0,
              show_default=True, help="How long to wait for the requests in flight.")
@pass_ctx
def spm_step_down(obj: CliContext, timeout_s: float) -> None:
    """Make this host give up the SPM role: finish or hand back the requests in flight,
    release the lease; another host takes over within one renewal interval."""
    from autoextend import control

    settings = obj.load_settings()
    path = settings.service.control_socket
    result = anyio.run(lambda: control.call_dict(path, "spm_step_down", wait_s=timeout_s + 10))
    click.echo(f"host {result.get('host_id')} stepped down (lver {result.get('lver')})")


@spm.command("drill")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 100), default=30.0,
              show_default=True, help="How long the step-down waits for requests in flight.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def spm_drill(obj: CliContext, timeout_s: float, as_json: bool) -> None:
    """A planned SPM failover under the current load, measured: run it on the SPM host.

    It steps down (requests in flight finish or are handed back; the lease is released),
    then reads the leader record until the next SPM holds the lease, and prints the
    takeover time, the requests handed back, this host's extensions and ENOSPC pauses
    during the drill, and what an unclean failover (the SPM host dies) would take with the
    configured io_timeout and watchdog time.
    """
    from autoextend import control
    from autoextend.timeouts import failover_s

    settings = obj.load_settings()
    path = settings.service.control_socket
    wait = timeout_s + failover_s(settings.lease.io_timeout_s,
                                  settings.lease.watchdog_fire_timeout_s) + 30
    result = anyio.run(lambda: control.call_dict(path, "spm_drill", wait_s=wait,
                                                 timeout_s=timeout_s))
    lines = result.pop("lines", [])
    echo_reply(path, result, lambda _: "\n".join(str(line) for line in lines), as_json)
