"""``autoextend journal dump``: the SPM's journal of metadata changes, read from any host.

A CLI process reads the ring straight from the metadata area (``lease.path``): no service,
no SPM and no network needed, and it writes nothing. It answers "who filled the VG, and
when": every change in ``seq`` order with the SPM's term (a line marks each term change),
then the growth per VG and requesting host.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import click

from autoextend.cli.context import CliContext, pass_ctx
from autoextend.directio import open_storage
from autoextend.errors import ConfigError
from autoextend.metadata_area import AreaTooSmall, check_journal_fits
from autoextend.names import is_valid_name
from autoextend.spm.config import journal_base
from autoextend.spm.journal import Op, Record, Scan
from autoextend.spm.journalring import Ring, read_ring

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> float:
    """``--since``: seconds since the epoch, an ISO date/time (UTC unless it says), or an
    age such as ``90s``, ``30m``, ``2h``, ``7d``. Raises click.BadParameter."""
    text = text.strip()
    ago = _AGO.fullmatch(text)
    if ago:
        return now - float(ago.group(1)) * _UNIT_S[ago.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time: give seconds since the epoch, an ISO date/time "
            "(2026-12-06T17:30) or an age (30m, 2h, 7d)", param_hint="--since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def check_volume(text: str) -> tuple[str, str | None]:
    """``--volume``: ``VG/LV`` or ``VG``. Raises click.BadParameter."""
    vg, sep, lv = text.partition("/")
    if not is_valid_name(vg) or (sep and not is_valid_name(lv)):
        raise click.BadParameter(f"{text!r} is not VG/LV or VG", param_hint="--volume")
    return vg, (lv if sep else None)


def select(records: Sequence[Record], since: float | None,
           volume: tuple[str, str | None] | None) -> list[Record]:
    out = []
    for r in records:
        if since is not None and r.entry.time_us < since * 1_000_000:
            continue
        if volume is not None and (r.entry.vg != volume[0]
                                   or volume[1] is not None and r.entry.lv != volume[1]):
            continue
        out.append(r)
    return out


def as_dict(r: Record) -> dict[str, Any]:
    e = r.entry
    return {"seq": r.seq, "time": _iso(e.time_us), "time_us": e.time_us, "lver": e.lver,
            "spm_host": e.spm_host, "host": e.host, "request_id": e.request_id,
            "generation": e.generation, "op": e.op.name.lower().replace("_", "-"),
            "volume": e.volume,
            "old_size": e.old_size or None, "new_size": e.new_size, "found": e.found}


def growth(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Per VG and requesting host: the changes and the LV bytes they added (reduces and
    removes count negative, a create its size; an extend whose old size is unknown counts
    0 bytes; a grow-pv adds room, not LV bytes: it counts 0)."""
    sums: dict[tuple[str, int], list[int]] = {}
    for r in records:
        e = r.entry
        row = sums.setdefault((e.vg, e.host), [0, 0])
        row[0] += 1
        if e.op is Op.CREATE:
            row[1] += e.new_size
        elif e.old_size and e.op is not Op.GROW_PV:
            row[1] += e.new_size - e.old_size
    return [{"vg": vg, "host": host, "changes": n, "bytes": added}
            for (vg, host), (n, added) in sorted(sums.items())]


def render(records: Sequence[Record], scan: Scan, where: str) -> list[str]:
    lines = [f"journal {where}: {len(scan.records)} records"
             + (f" (seq {scan.records[0].seq}..{scan.records[-1].seq})" if scan.records else "")
             + f", {scan.skipped} torn or garbage slots skipped, {len(records)} shown"]
    if not records:
        return lines
    lines.append(f"{'SEQ':>8}  {'TIME (UTC)':<23}  {'LVER':>5}  {'SPM':>4}  {'HOST':>4}  "
                 f"{'REQUEST':>10}  {'OP':<7}  {'VOLUME':<24}  {'OLD':>10}  {'NEW':>10}")
    term: tuple[int, int] | None = None
    for r in records:
        e = r.entry
        if term is not None and (e.lver, e.spm_host) != term:
            lines.append(f"{'':>8}  --- SPM term changed: lver {term[0]} (host {term[1]})"
                         f" -> lver {e.lver} (host {e.spm_host}) ---")
        term = (e.lver, e.spm_host)
        old = _size(e.old_size) if e.old_size else "-" if e.op is Op.CREATE else "?"
        lines.append(f"{r.seq:>8}  {_iso(e.time_us)[:23]:<23}  {e.lver:>5}  {e.spm_host:>4}  "
                     f"{e.host or '-':>4}  {e.request_id or '-':>10}  {_op(r):<7}  "
                     f"{e.volume:<24}  {old:>10}  {_size(e.new_size):>10}")
    lines.append("growth by VG and requesting host:")
    for row in growth(records):
        sign = "+" if row["bytes"] >= 0 else "-"
        lines.append(f"  {row['vg']:<16} host {row['host'] or '-':>4}: {row['changes']:>6}"
                     f" changes, {sign}{_size(abs(row['bytes']))}")
    return lines


def _op(r: Record) -> str:
    """The op; ``extend!`` for a change recorded late (FOUND: see the command's help)."""
    return r.entry.op.name.lower().replace("_", "-") + ("!" if r.entry.found else "")


def _iso(time_us: int) -> str:
    when = datetime.fromtimestamp(time_us / 1_000_000, UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def _size(n: int) -> str:
    if n % (1 << 30) == 0 and n:
        return f"{n >> 30} GiB"
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n / (1 << 20):.1f} MiB"


@click.group("journal")
def journal() -> None:
    """The SPM's journal of metadata changes on the shared storage."""


@journal.command("dump")
@click.option("--since", default=None,
              help="Only changes from then on: seconds since the epoch, an ISO date/time "
                   "(UTC unless it says) or an age (30m, 2h, 7d).")
@click.option("--volume", default=None, help="Only changes to VG/LV (or to any LV of VG).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--path", default=None, help="The metadata area (default lease.path).")
@pass_ctx
def dump(obj: CliContext, since: str | None, volume: str | None, as_json: bool,
         path: str | None) -> None:
    """Show every metadata change the SPMs made (extend, reduce, create, remove,
    grow-pv: a VG's PVs resized, its volume shown as "VG/"), oldest first: when, the
    SPM's term (lver) and host, the host that asked, the request id, the volume, and its
    size before and after; then the growth per VG and host. Reads the metadata area
    directly (from any host, without the service); writes nothing.

    An op marked "!" ("found": true in JSON) was recorded late: an SPM found the volume
    grown past the last size the journal had for it (an SPM that died between its change
    and its record, or a change made outside autoextend).

    \b
    Examples:
      autoextend journal dump --since 2h --volume demo       # who filled VG demo lately
      autoextend journal dump --volume demo/vm1-disk --json
    """
    settings = obj.load_settings()
    lease = settings.lease
    area = path or lease.path
    if not area:
        raise ConfigError("<command line>", [("lease.path", "no metadata area configured")])
    when = parse_since(since, datetime.now(UTC).timestamp()) if since is not None else None
    only = check_volume(volume) if volume is not None else None
    base = journal_base(settings.mailbox, lease.offset)

    async def run() -> Scan:
        storage = await open_storage(area, lease.sector_size, lease.io_timeout_s)
        try:
            check_journal_fits(area, base, storage.size)
            return await read_ring(storage, Ring(base))
        finally:
            await storage.close()

    try:
        scan = anyio.run(run)
    except AreaTooSmall as err:
        raise click.ClickException(f"no journal on this metadata area: {err}") from None
    records = select(scan.records, when, only)
    if as_json:
        click.echo(json.dumps({"path": area, "offset": base, "records": [as_dict(r) for r in
                                                                          records],
                               "skipped": scan.skipped, "total": len(scan.records),
                               "growth": growth(records)}, indent=2))
        return
    click.echo("\n".join(render(records, scan, f"{area} offset {base}")))
