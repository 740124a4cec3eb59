"""``autoextend run`` and ``status``."""

from __future__ import annotations

import sys
from typing import Any

import anyio
import click

from autoextend.capacity.render import render_capacity
from autoextend.cli.context import CliContext, echo_reply, pass_ctx
from autoextend.monitor.protocols import ENOSPC_TO_GUEST

RUN_EPILOG = """\b
Examples:
  autoextend run                                   # /etc/autoextend/autoextend.toml
  autoextend run --config ./pool.toml --log-level debug
  systemctl reload autoextend                      # SIGHUP: re-read the config file

\b
Start-up: the config is checked first with every rule of `autoextend config check`
(a problem: one line, exit 2). Then the control socket, the lease and mailbox (mailbox
mode), the metrics endpoint and the monitor start, in that order; whatever the machine
refuses (a port in use, a missing or unformatted lease area, a socket directory that
cannot be made) is one line naming the part and the reason, exit 1. READY=1 goes to
systemd once all of it is up.
"""


@click.command("run", epilog=RUN_EPILOG)
@pass_ctx
def run(obj: CliContext) -> None:
    """Run the service: watch the VMs, extend their volumes, resume ENOSPC pauses.

    What runs follows the config: the hypervisor backend ([service] hypervisor: QMP sockets or
    libvirt), the extender ([service] extender: "local" extends through the volume backend on
    this host, "mailbox" asks the SPM over the shared storage and takes part in the SPM
    election with the Disk Paxos lease), the control socket for `autoextend status`, and the
    Prometheus endpoint ([metrics]).

    Logs go to stderr (JSON lines unless stderr is a TTY). SIGTERM or SIGINT stop the service
    cleanly; SIGHUP re-reads the config file (an invalid file is logged and the running config
    kept; command-line options stay applied).
    """
    from autoextend.service import run_service

    run_service(obj.load_service_settings(), obj.config_path, obj.cli_overrides())


def _human(size: Any) -> str:
    if not isinstance(size, int):
        return str(size)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if size >= scale:
            return f"{size / scale:.1f}{unit}"
    return f"{size}B"


def render_status(result: dict[str, Any]) -> str:
    """The readable form of ``status``: what an operator asks first, first."""
    lines: list[str] = []
    svc = result.get("service", {})
    spm = result.get("spm")
    if spm is not None:
        lines.append(f"SPM: host {spm.get('spm_host_id') or 'none'}"
                     f" (this host: {spm.get('host_id')}, lease {spm.get('lease_health')})")
    lines.append(
        f"hypervisor {svc.get('hypervisor')}, extender {svc.get('extender')}"
        + (", DRY RUN" if svc.get("dry_run") else "")
        + f"; {svc.get('extends_in_flight', 0)} extending, {svc.get('extends', 0)} extends,"
        f" {svc.get('failed', 0)} failed, {svc.get('enospc_pauses', 0)} ENOSPC pauses,"
        f" {svc.get('resumes', 0)} resumed"
        + (f", {svc['unmanaged_enospc']} unmanaged ENOSPC" if svc.get("unmanaged_enospc") else "")
        + (f", {svc['io_error_resumes']} I/O-error resumes" if svc.get("io_error_resumes") else "")
        + (f", {svc['kills']} killed" if svc.get("kills") else "")
        + (f", {svc['stale_views']} stale views ({svc.get('stale_view_pauses', 0)} paused)"
           if svc.get("stale_views") else "")
    )
    if svc.get("hypervisor_problem"):
        lines.append(f"WARNING: {svc['hypervisor_problem']}")
    held = (result.get("config") or {}).get("held")
    if held:
        keys = held.get("held_keys", [])
        lines.append(f"RELOAD HELD: the config file looks half-written ({len(keys)} key(s): "
                     + ", ".join(keys) + "); see `autoextend config check`, then"
                     " `autoextend config reload --confirm` applies it")
    pending = (result.get("config") or {}).get("pending_restart")
    if pending:
        lines.append("RESTART NEEDED: the config file changes " + ", ".join(pending)
                     + " (the running values stay until a restart)")
    lines.extend(render_capacity(result.get("capacity")))
    foreign = result.get("foreign_writes") or {}
    if foreign.get("total"):
        lines.append(f"FOREIGN WRITES: {foreign['total']} change(s) to the pool's VG metadata "
                     f"by another writer; last: {foreign.get('last')}")
    vms = result.get("vms", [])
    if not vms:
        lines.append("no VMs monitored")
    for vm in vms:
        paused = f"  PAUSED ({vm['paused']})" if vm.get("paused") else ""
        last = f"  last: {vm['last_action']}" if vm.get("last_action") else ""
        lines.append(f"{vm['vm']}{paused}{last}")
        for d in vm.get("drives", []):
            err = f"  last error: {d['last_error']}" if d.get("last_error") else ""
            job = f" ({d['job']} target)" if d.get("job") else ""
            if d.get("throttle"):
                err += f"  {d['throttle']}"
            if d.get("error_policy") in ENOSPC_TO_GUEST:
                err += f"  policy={d['error_policy']}: ENOSPC reaches the guest"
            lines.append(
                f"  {d['drive'] + job:<8} {d['volume']:<24} {d['state']:<9}"
                f" alloc {_human(d['allocation'])} / phys {_human(d['physical'])}"
                f" / cap {_human(d['cap'])}  threshold {_human(d['threshold'])}{err}"
            )
            stale = (vm.get("stale_views") or {}).get(d["drive"])
            if stale:
                lines.append(f"    STALE VIEW: {stale}; guest paused, never resumed by"
                             " autoextend: check the guest's data, refresh the view"
                             " (autoextend volume prepare), then resume it by hand")
    return "\n".join(lines)


STATUS_EPILOG = """\b
Examples:
  autoextend status
  autoextend status --json | jq '.vms[] | select(.paused)'
  autoextend status --config /etc/autoextend/pool.toml   # its [service] control_socket

\b
Output: the SPM line (mailbox mode: the SPM's host id, this host's id and lease
health), a summary line (hypervisor, extender, extends in flight and done, failures,
ENOSPC pauses, automatic resumes), then each VM (PAUSED with the reason when paused)
and each of its drives: volume, state, allocation / physical size / cap, threshold and
the last error; a STALE VIEW line under a drive whose view was found smaller than its
volume (the guest is paused and autoextend never resumes it). Exit 1 with one line when
the service is not running.
"""


@click.command("status", epilog=STATUS_EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stdout).")
@pass_ctx
def status(obj: CliContext, as_json: bool) -> None:
    """Show what the running service is doing.

    Asks the running `autoextend run` over its control socket ([service] control_socket,
    mode 0600: run as root) and prints its state. The sizes are in bytes in --json, rounded
    MiB/GiB otherwise.
    """
    from autoextend import control

    settings = obj.load_settings()
    path = settings.service.control_socket
    result = anyio.run(control.call_dict, path, "status")
    echo_reply(path, result, render_status, as_json)


@click.command("demo")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary at the end.")
@click.option("--hypervisor", type=click.Choice(["qmp", "libvirt"]), default="qmp",
              show_default=True, help="Watch the guest over QMP or through libvirtd.")
@click.option("--hosts", type=click.IntRange(1, 8), default=None,
              help="Host processes sharing one pool (default 2; 1 = single-host local mode;"
                   " libvirt runs single-host).")
@click.option("--kill-spm", is_flag=True,
              help="SIGKILL the SPM host partway (it is restarted a second later).")
@click.option("--vms", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Guests in single-host mode.")
@click.option("--write-mib", type=click.IntRange(1, 65536), default=1024, show_default=True,
              help="How much each guest writes (then reads back and verifies).")
@click.option("--start-mib", type=click.IntRange(8, 65536), default=128, show_default=True,
              help="Initial volume size.")
@click.option("--chunk-mib", type=click.IntRange(4, 65536), default=128, show_default=True)
@pass_ctx
def demo(obj: CliContext, as_json: bool, hypervisor: str, hosts: int | None, kill_spm: bool,
         vms: int, write_mib: int, start_mib: int, chunk_mib: int) -> None:
    """Run the embedded end-to-end demo on this machine (needs root, QEMU, loop devices).

    By default two autoextend host processes share one pool (one metadata area with the
    leases and mailboxes, one volume root); one of them is elected SPM. Each runs a real guest
    that writes WRITE_MIB into a thin volume starting at START_MIB; the hosts extend them
    through the SPM as they fill. Exit code 0 only when the data is verified and no VM is left
    paused.
    """
    if hosts is None:
        hosts = 1 if hypervisor == "libvirt" else 2
    if hosts > 1 and hypervisor == "libvirt":
        raise click.BadParameter("the libvirt demo runs a single host", param_hint="--hosts")
    if kill_spm and hosts < 2:
        raise click.BadParameter("--kill-spm needs at least 2 hosts", param_hint="--kill-spm")
    from autoextend.lab import demo as demo_mod

    obj.log_level = obj.log_level or "warning"
    obj.setup_logs()
    options = demo_mod.DemoOptions(
        hosts=hosts, kill_spm=kill_spm, vms=vms, write_mib=write_mib, start_mib=start_mib,
        chunk_mib=chunk_mib,
        virtual_mib=max(2048, write_mib * 2), hypervisor=hypervisor,
        progress=not as_json and sys.stdout.isatty(),
    )
    raise click.exceptions.Exit(demo_mod.main(options, as_json))


def register(group: click.Group) -> None:
    group.add_command(run)
    group.add_command(status)
    group.add_command(demo)
