"""``autoextend lease``: format the lease area (``init``) and show every record (``dump``)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import click

from autoextend import startup
from autoextend.cli.context import CliContext, pass_ctx
from autoextend.directio import open_storage
from autoextend.errors import ConfigError
from autoextend.lease.area import dump_area, format_area
from autoextend.lease.config import LeaseSettings
from autoextend.lease.engine_record import BadEngineRecord, read_record, write_record
from autoextend.lease.layout import LeaseLayout
from autoextend.lease.sanlock_area import dump_sanlock, format_sanlock
from autoextend.lease.sanlock_engine import sanlock_location
from autoextend.metadata_area import AreaTooSmall, check_journal_fits, journal_end
from autoextend.spm.config import journal_base
from autoextend.spm.journalring import Ring, clear_ring


def _settings(obj: CliContext, path: str | None, offset: int | None, max_hosts: int | None,
              sector_size: int | None, engine: str | None = None) -> LeaseSettings:
    over: dict[str, Any] = {}
    for key, value in (("path", path), ("offset", offset), ("max_hosts", max_hosts),
                       ("sector_size", sector_size), ("engine", engine)):
        if value is not None:
            over[key] = value
    lease = obj.load_settings(lease=over).lease if over else obj.load_settings().lease
    if not lease.path:
        raise ConfigError("<command line>", [("lease.path", "no lease path configured")])
    return lease


_common = [
    click.option("--path", default=None, help="Shared file or block device (default lease.path)."),
    click.option("--offset", type=int, default=None, help="Area offset in bytes (1 MiB aligned)."),
    click.option("--max-hosts", type=int, default=None, help="Host slots (lease.max_hosts)."),
    click.option("--sector-size", type=click.Choice(["0", "512", "4096"]), default=None,
                 help="0 = detect."),
    click.option("--engine", type=click.Choice(["native", "sanlock"]), default=None,
                 help="Lease engine (default lease.engine)."),
]


def _with_common(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.group("lease")
def lease() -> None:
    """Format and inspect the lease area on shared storage."""


@lease.command("init")
@_with_common
@click.option("--yes", is_flag=True, help="Do not ask before overwriting the area.")
@pass_ctx
def init(obj: CliContext, path: str | None, offset: int | None, max_hosts: int | None,
         sector_size: str | None, engine: str | None, yes: bool) -> None:
    """Format the lease area for the lease engine (native: host id slots, SPM leader,
    dblocks; sanlock: a lockspace and the SPM resource) and record the engine in it.
    Destroys existing leases: run it only while no host uses the area."""
    cfg = _settings(obj, path, offset, max_hosts, int(sector_size) if sector_size else None,
                    engine)
    mailbox = obj.load_settings().mailbox
    journal = journal_base(mailbox, cfg.offset) if mailbox.journal is not False else None
    journal_auto = mailbox.journal == "auto"
    if not yes:
        click.confirm(f"Format the lease area at {cfg.path} offset {cfg.offset}?", abort=True)

    async def run() -> LeaseLayout:
        storage = await open_storage(cfg.path, cfg.sector_size, cfg.io_timeout_s)
        try:
            nonlocal journal
            if journal is not None:  # before anything is written
                try:
                    check_journal_fits(cfg.path, journal, storage.size)
                except AreaTooSmall:
                    if not journal_auto:
                        raise
                    journal = None  # "auto": no journal on an area this small
            layout = LeaseLayout(cfg.offset, storage.sector_size, cfg.max_hosts)
            if cfg.engine == "sanlock":
                startup.check_lease_area_fits(cfg.path, cfg.offset, storage.size)
                await anyio.to_thread.run_sync(format_sanlock, cfg, storage.sector_size)
            else:
                await format_area(storage, layout, cfg.io_timeout_s)
            await write_record(storage, cfg)
            if journal is not None:
                await clear_ring(storage, Ring(journal))
            return layout
        finally:
            await storage.close()

    try:
        layout = anyio.run(run)
    except AreaTooSmall as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    if journal is not None:
        click.echo(f"journal cleared: offset {journal}..{journal_end(journal)}")
    elif journal_auto:
        click.echo("no journal: the area is too small for one ([mailbox] journal = \"auto\")")
    if cfg.engine == "sanlock":
        where, ls_offset, res_offset = sanlock_location(cfg)
        click.echo(f"formatted lease area for sanlock: lockspace {cfg.sanlock_lockspace!r} at "
                   f"{where} offset {ls_offset}, SPM resource at offset {res_offset}; "
                   f"mailbox at offset {layout.end}")
        return
    click.echo(f"formatted lease area: {cfg.path} offset {layout.base} sector {layout.sector_size} "
               f"max_hosts {layout.max_hosts}; mailbox at offset {layout.end}")


@lease.command("dump")
@_with_common
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Include free host slots and idle dblocks.")
@pass_ctx
def dump(obj: CliContext, path: str | None, offset: int | None, max_hosts: int | None,
         sector_size: str | None, engine: str | None, as_json: bool, show_all: bool) -> None:
    """Show every record of the lease area (unreadable ones with their error), for the
    engine recorded in the area (else lease.engine / --engine)."""
    cfg = _settings(obj, path, offset, max_hosts, int(sector_size) if sector_size else None,
                    engine)

    async def run() -> dict[str, Any]:
        storage = await open_storage(cfg.path, cfg.sector_size, cfg.io_timeout_s)
        try:
            try:
                record = await read_record(storage, cfg.offset)
            except BadEngineRecord as err:
                record, bad = None, str(err)
            else:
                bad = ""
            use = record.engine if record is not None and engine is None else cfg.engine
            if use == "sanlock":
                if record is not None and record.engine == "sanlock" and engine is None:
                    cfg2 = cfg.model_copy(update={"sanlock_lockspace": record.lockspace,
                                                  "sanlock_path": record.location})
                else:
                    cfg2 = cfg
                data = await dump_sanlock(cfg2, storage.sector_size)
            else:
                data = await dump_area(
                    storage, LeaseLayout(cfg.offset, storage.sector_size, cfg.max_hosts)
                )
                data["engine"] = "native"
            data["engine_record"] = (
                {"error": bad} if bad else None if record is None else record.__dict__)
            return data
        finally:
            await storage.close()

    try:
        data = anyio.run(run)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if data["engine"] == "sanlock":
        _print_sanlock(data, show_all)
        return
    area = data["area"]
    click.echo(f"area offset {area['offset']} sector {area['sector_size']} "
               f"max_hosts {area['max_hosts']} mailbox {area['mailbox_offset']}")
    lead = data["leader"]
    if "error" in lead:
        click.echo(f"leader: UNREADABLE ({lead['error']})")
    else:
        owner = (
            "none" if lead["free"] else f"host {lead['owner_id']} gen {lead['owner_generation']}"
        )
        click.echo(f"leader: lver {lead['lver']} owner {owner} written by {lead['write_id']} "
                   f"flags {','.join(lead['flags']) or '-'}")
    click.echo("hosts:")
    for h in data["hosts"]:
        if "error" in h:
            click.echo(f"  {h['host_id']:>4}  UNREADABLE ({h['error']})")
        elif show_all or h["state"] != "free" or h["generation"]:
            click.echo(f"  {h['host_id']:>4}  {h['state']:<5} gen {h['generation']:<6} "
                       f"ts {h['timestamp_us']:<16} name {h['host_name']!r}")
    click.echo("dblocks:")
    for b in data["dblocks"]:
        if "error" in b:
            click.echo(f"  {b['host_id']:>4}  UNREADABLE ({b['error']})")
        elif show_all or b["lver"] or b["mbal"]:
            click.echo(f"  {b['host_id']:>4}  lver {b['lver']:<6} mbal {b['mbal']:<8} "
                       f"bal {b['bal']:<8} inp {b['inp_host']}/{b['inp_generation']} "
                       f"flags {','.join(b['flags']) or '-'}")


def _print_sanlock(data: dict[str, Any], show_all: bool) -> None:
    area = data["area"]
    click.echo(f"engine sanlock: lockspace {area['lockspace']!r} on {area['path']} offset "
               f"{area['lockspace_offset']}, SPM resource at offset {area['resource_offset']}, "
               f"sector {area['sector_size']}")
    lead = data["leader"]
    if "error" in lead:
        click.echo(f"leader: UNREADABLE ({lead['error']})")
    else:
        owner = "none" if lead["free"] else (
            f"host {lead['owner_id']} gen {lead['owner_generation']}")
        click.echo(f"leader: lver {lead['lver']} owner {owner} written by {lead['write_id']}")
    click.echo("hosts:")
    for h in data["hosts"]:
        if "error" in h:
            click.echo(f"  {h['host_id']:>4}  UNREADABLE ({h['error']})")
        elif show_all or h["state"] != "free" or h["generation"]:
            click.echo(f"  {h['host_id']:>4}  {h['state']:<5} gen {h['generation']:<6} "
                       f"ts {h['timestamp']:<12} name {h['host_name']!r}")
