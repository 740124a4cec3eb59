"""``autoextend pool admit``: may a new disk of a given size join the pool? (any host)

It reads the SPM's committed-space record (``capacity/committed_record.py``) from the
metadata area with direct I/O, as ``lease dump`` reads the leases: no SPM, no running
service and no network needed. Exit 0: admitted; 1: refused; 2: a usage error, or no
fresh record to decide on (local mode, no SPM, an SPM of an earlier release).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict
from fractions import Fraction
from typing import Any

import anyio
import click

from autoextend.capacity import committed_record
from autoextend.capacity.admission import Admission, VgCommitted, admit, pool_total
from autoextend.capacity.committed_record import BadCommittedRecord, CommittedRecord
from autoextend.cli.context import CliContext, pass_ctx
from autoextend.directio import open_storage
from autoextend.errors import ConfigError
from autoextend.lease.config import LeaseSettings

UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", re.IGNORECASE)
MAX_SIZE = (1 << 63) - 1


class NoFreshRecord(click.ClickException):
    """Nothing to decide on (exit 2): no record, an unusable one, or a stale one."""

    exit_code = 2


def parse_size(text: str) -> int:
    """Bytes from ``10G``, ``512MiB``, ``1.5T``, ``4096`` (binary units); ValueError."""
    m = SIZE.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a size (examples: 20G, 512MiB, 1.5T, 4096)")
    value = Fraction(m.group(1)) * UNITS[m.group(2).lower()]
    if value.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    if not 0 < value <= MAX_SIZE:
        raise ValueError(f"{text!r} must be more than 0 and less than 8 EiB")
    return int(value)


def _size_param(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


async def read_record(lease: LeaseSettings) -> CommittedRecord | None:
    """The record in the metadata area (None: never written). Raises StorageError,
    BadCommittedRecord."""
    storage = await open_storage(lease.path, lease.sector_size, lease.io_timeout_s)
    try:
        offset = committed_record.record_offset(lease.offset, storage.sector_size)
        return committed_record.decode(await storage.read(offset, storage.sector_size))
    finally:
        await storage.close()


def check_fresh(rec: CommittedRecord | None, now: float,
                max_age_s: float) -> tuple[CommittedRecord, float]:
    """The record and its age in seconds; NoFreshRecord when there is none, or it is too
    old (or dated too far in the future)."""
    if rec is None:
        raise NoFreshRecord("no SPM has published the pool's committed space yet (is the"
                            " SPM running this release, with [capacity] enabled?)")
    age = now - rec.published_ms / 1000.0
    if age < -max_age_s:
        raise NoFreshRecord(
            f"the committed-space record of SPM host {rec.host_id} is dated {-age:.0f} s in"
            f" the future (over {max_age_s:.0f} s): the hosts' clocks disagree")
    if age > max_age_s:
        raise NoFreshRecord(
            f"the committed-space record of SPM host {rec.host_id} is {age:.0f} s old"
            f" (over {max_age_s:.0f} s): no SPM, a stuck one, one of an earlier release,"
            " or the hosts' clocks disagree")
    return rec, age


def choose(rec: CommittedRecord, vg: str | None) -> VgCommitted:
    """The VG asked for, or the whole pool; NoFreshRecord for a VG not in the record."""
    if vg is None:
        if not rec.vgs:
            raise NoFreshRecord("the SPM's record has no VG")
        return rec.vgs[0] if len(rec.vgs) == 1 else pool_total(rec.vgs)
    for v in rec.vgs:
        if v.vg == vg:
            return v
    names = ", ".join(v.vg for v in rec.vgs) or "none"
    raise NoFreshRecord(f"VG {vg} is not in the SPM's record (VGs: {names})")


def _b(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def as_dict(a: Admission, rec: CommittedRecord, age: float) -> dict[str, Any]:
    f = a.figures
    return {
        "admit": a.admit, "reason": a.reason, "vg": None if f.vg == "*" else f.vg,
        "new": a.new, "size": f.size, "committed": f.committed, "volumes": f.volumes,
        "unknown": f.unknown, "max_ratio": a.max_ratio, "limit": a.limit, "room": a.room,
        "ratio": round(a.ratio, 4), "ratio_after": round(a.ratio_after, 4),
        "record": {"spm_host_id": rec.host_id, "seq": rec.seq, "age_s": round(age, 1)},
        "vgs": [asdict(v) for v in rec.vgs],
    }


def render(a: Admission, rec: CommittedRecord, age: float) -> str:
    f = a.figures
    where = "the pool" if f.vg == "*" else f"VG {f.vg}"
    verdict = "admit" if a.admit else "refuse"
    lines = [
        f"{verdict}: a {_b(a.new)} disk in {where}: {a.reason}",
        f"  {where}: size {_b(f.size)}, committed {_b(f.committed)} ({a.ratio:.2f}x)"
        f" in {f.volumes} volume(s), {f.unknown} of unknown virtual size",
        f"  with the new disk: {_b(f.committed + a.new)} ({a.ratio_after:.2f}x);"
        f" limit {a.max_ratio:g}x = {_b(a.limit)}; room {_b(a.room)}",
        f"  record: SPM host {rec.host_id}, seq {rec.seq}, {age:.0f} s old",
    ]
    return "\n".join(lines)


@click.group("pool")
def pool() -> None:
    """The pool as a whole: admission (from the metadata area, any host, no SPM
    needed) and growth (through the pool's one writer)."""


@pool.command("admit", epilog="""\b
Examples:
  autoextend pool admit --size 100G             # the pool (or its only VG)
  autoextend pool admit --size 512MiB --vg gold --json
\b
Exit codes: 0 admitted; 1 refused; 2 a usage error, or no fresh record to decide on.
""")
@click.option("--size", "new", required=True, callback=_size_param, metavar="SIZE",
              help="The new disk's virtual size: bytes, or with K/M/G/T/P (binary; "
                   "e.g. 100G, 512MiB).")
@click.option("--vg", default=None, help="Decide for this VG (default: the whole pool).")
@click.option("--ratio", "max_ratio", type=click.FloatRange(min=0, min_open=True, max=1000),
              default=None, help="Over-commit ratio to check against (default "
                                 "[capacity] max_overcommit_ratio).")
@click.option("--allow-unknown", is_flag=True,
              help="Decide on the volumes of known virtual size when some are unknown.")
@click.option("--max-age", "max_age_s", type=click.FloatRange(min=1, max=86400), default=None,
              help="Oldest record to decide on, in seconds (default 3 x [capacity] "
                   "committed_interval_s).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def pool_admit(obj: CliContext, new: int, vg: str | None, max_ratio: float | None,
               allow_unknown: bool, max_age_s: float | None, as_json: bool) -> None:
    """Would a new disk of --size keep the pool (or --vg) at or under the over-commit ratio?

    The committed space is the sum of the virtual sizes of every volume in the pool's VGs
    (their autoextend.vsize LV tags, or qemu-img info where a volume has none), which the
    SPM publishes every [capacity] committed_interval_s. A disk is admitted when committed
    + SIZE <= ratio x the VG's size. Volumes whose virtual size the SPM could not learn are
    counted as unknown; with any, the answer is a refusal unless --allow-unknown.
    """
    settings = obj.load_settings()
    lease = settings.lease
    if not lease.path:
        raise ConfigError(obj.config_source, [(
            "lease.path", "no metadata area configured: pool admit reads the SPM's record"
                          " (mailbox mode only)")])
    try:
        rec = anyio.run(read_record, lease)
    except BadCommittedRecord as exc:
        raise NoFreshRecord(f"the SPM's committed-space record is unusable: {exc}") from None
    rec, age = check_fresh(rec, time.time(),
                           max_age_s or 3 * settings.capacity.committed_interval_s)
    answer = admit(choose(rec, vg), new,
                   max_ratio or settings.capacity.max_overcommit_ratio,
                   allow_unknown=allow_unknown)
    if as_json:
        click.echo(json.dumps(as_dict(answer, rec, age), indent=2, sort_keys=True))
    else:
        click.echo(render(answer, rec, age))
    if not answer.admit:
        raise click.exceptions.Exit(1)


def _render_grown(r: dict[str, Any]) -> str:
    lines = []
    for v in r["vgs"]:
        added = f", added {_b(v['size'])}" if v["size"] else ""
        lines.append(f"VG {v['vg']}: {v['text']}{added}")
    return "\n".join(lines)


@pool.command("grow", epilog="""\b
Examples:
  autoextend pool grow             # every VG of [lvm] vgs
  autoextend pool grow --vg gold
""")
@click.option("--vg", "vgs", multiple=True, help="Only this VG (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def pool_grow(obj: CliContext, vgs: tuple[str, ...], as_json: bool) -> None:
    """Use a grown LUN: pvresize the PVs whose device grew (through the pool's one writer).

    Rescan the LUN on every host first. Mailbox mode: the SPM runs it (from any host),
    once every live host's published view of the device is at least as large as its own
    (it waits a few seconds for them, then refuses with one line naming the host whose
    view is smaller); local mode: this host's writer. A PV that did not grow is left
    alone, so running it twice changes nothing. Drives paused on a full VG resume once the
    watcher sees the space.
    """
    from autoextend import control
    from autoextend.cli.context import echo_reply

    settings = obj.load_settings()
    path = settings.service.control_socket
    result = anyio.run(lambda: control.call_dict(path, "pool_grow", wait_s=310.0,
                                                 vgs=list(vgs)))
    echo_reply(path, result, _render_grown, as_json)
