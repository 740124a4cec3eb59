"""``autoextend pool status``: the whole pool from the metadata area, on any host (issue 33).

It reads the lease records, the SPM's leader and VG records and every host's summary record
directly, read-only (``autoextend/poolview.py``): no service, SPM or network needed.
"""

from __future__ import annotations

import json

import anyio
import click

from autoextend.cli.context import CliContext, pass_ctx
from autoextend.errors import ConfigError


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--observe", "observe_s", type=click.FloatRange(0, 3600), default=None,
              help="Seconds to watch the host records for renewals (default: until every "
                   "held host renewed once or is said dead by a live one, at most 3 x "
                   "io_timeout; 0: one read).")
@pass_ctx
def pool_status(obj: CliContext, as_json: bool, observe_s: float | None) -> None:
    """Every host (id, name, live or dead, generation, last renewal, engine), the SPM and its
    term, each VG's figures and level from the SPM's record, and each host's summary (VMs,
    drives, paused VMs and why, extensions in the last hour, the last one's latency,
    version). Works on any host that sees the metadata area, with or without the service.

    A host is live when its lease record changed while this command watched; one that did
    not is dead or fail when the lease of a host seen live says so (its summary record),
    else silent or unknown.
    """
    from autoextend import poolreport, poolview
    from autoextend.clock import MonotonicClock

    settings = obj.load_settings()
    if not settings.lease.path:
        raise ConfigError(obj.config_source, [("lease.path", "no lease path configured: "
                                               "pool status reads the metadata area")])
    reading = anyio.run(poolview.read_pool, settings, MonotonicClock(), observe_s)
    report = poolreport.combine(reading, settings.capacity)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo("\n".join(poolreport.lines(report)))
