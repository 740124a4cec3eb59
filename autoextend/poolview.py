"""``autoextend pool status``: the whole pool as any host (or a machine that only reads the
metadata area) sees it, without the SPM, the service or a network.

Everything comes from the metadata area, read-only, with O_DIRECT (like ``lease dump``):

- **hosts**: the lease's host records (native delta records, or sanlock's lockspace): id,
  name, generation, free or held;
- **the SPM and its term**: the SPM lease's leader record (owner, lver);
- **VG figures**: the SPM's VG record (``capacity/record.py``), with each VG's level by this
  host's ``[capacity]`` levels;
- **per host**: its summary record (``spm/summary.py``): VMs, drives, paused VMs and why,
  extensions in the last hour, the last extension's latency, version, engine, and its
  lease's view of the peers it does not see live.

**Liveness, without a clock shared with anyone.** A host record changes at every renewal
(every 2T). This command reads the host records again every :data:`POLL_S` for a while
(``--observe``; by default until every held host has changed once or is said dead or
failing by a host seen live, at most one renewal interval plus T of the slowest host,
3T): a host whose record changed is **live**, and its renewal age is at most the time
since the read that showed the change. A host whose record
did not change is judged by what the lease of the hosts seen live says of it, from their
summary records (the services' ``LeaseEngine.host_states()``, the rule of
``lease/liveness.py``: DEAD only after 8T + W of silence proven by a read): **dead** if one
of them says dead, **fail** if one says fail; this command's own reads call it dead only
when it watched it silent for its host_dead itself (``--observe`` that long). Otherwise it
is **silent** (no renewal seen in a whole renewal interval) or **unknown**. A peer's word
about a host counts only for the generation it names (low 32 bits), so a restarted host is
never taken for its dead predecessor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from autoextend.capacity import record as vgrecord
from autoextend.clock import Clock
from autoextend.config import Settings
from autoextend.directio import open_storage
from autoextend.lease.engine_record import BadEngineRecord, read_record
from autoextend.lease.errors import RecordError
from autoextend.lease.format import unpack_delta, unpack_leader
from autoextend.lease.layout import LeaseLayout
from autoextend.lease.sanlock_area import DELTA_MAGIC, PAXOS_MAGIC, parse_leader
from autoextend.lease.sanlock_engine import sanlock_location
from autoextend.sectors import SectorStorage
from autoextend.spm import summary
from autoextend.spm.config import mailbox_base
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout

POLL_S = 0.1


@dataclass(frozen=True)
class Slot:
    """One host record of the lease area as read once."""

    host_id: int
    raw: bytes
    free: bool = True
    name: str = ""
    generation: int = 0
    io_timeout_s: float = 0.0
    error: str = ""


@dataclass
class Watch:
    """What the reads showed of one slot (times on this process's monotonic clock)."""

    slot: Slot
    changed: bool = False
    last_change: float = 0.0   # completion of the read that first showed the last bytes


@dataclass(frozen=True)
class Leader:
    owner: int | None
    lver: int
    error: str = ""


@dataclass
class Reading:
    """Everything read from the area (input of the pure :func:`combine`)."""

    engine: str
    watches: dict[int, Watch]
    observed_s: float
    leader: Leader
    records: dict[int, summary.SummaryRecord | str]   # str: why unreadable
    vg: vgrecord.VgRecord | None | str
    wall_us: int
    now: float
    local_host: int
    timeouts: Mapping[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def _native_slots(raw: bytes, layout: LeaseLayout) -> dict[int, Slot]:
    ss = layout.sector_size
    out: dict[int, Slot] = {}
    for index in range(layout.max_hosts):
        host = index + 1
        sector = raw[index * ss:(index + 1) * ss]
        try:
            rec = unpack_delta(sector, layout.delta_offset(host), host)
        except RecordError as err:
            if any(sector):
                out[host] = Slot(host, sector, free=False, error=err.reason)
            continue
        if rec.free and not rec.generation:
            continue
        out[host] = Slot(host, sector, rec.free, rec.host_name, rec.generation,
                         rec.io_timeout_ms / 1000.0)
    return out


def _sanlock_slots(raw: bytes, ss: int, max_hosts: int) -> dict[int, Slot]:
    out: dict[int, Slot] = {}
    for index in range(max_hosts):
        sector = raw[index * ss:(index + 1) * ss]
        rec = parse_leader(sector)
        host = index + 1
        if rec["magic"] != DELTA_MAGIC:
            if any(sector):
                out[host] = Slot(host, sector, free=False,
                                 error=f"bad magic {rec['magic']:#010x}")
            continue
        if rec["timestamp"] == 0 and not rec["owner_generation"]:
            continue
        out[host] = Slot(host, sector, rec["timestamp"] == 0, rec["resource_name"],
                         rec["owner_generation"], float(rec["io_timeout"]))
    return out


class AreaReader:
    """Reads the lease records, the leader, the summary records and the VG record."""

    def __init__(self, settings: Settings, storage: SectorStorage, engine: str,
                 lease_storage: SectorStorage, ls_offset: int, res_offset: int) -> None:
        self.settings = settings
        self.storage = storage
        self.engine = engine
        self.lease_storage = lease_storage
        self.ls_offset = ls_offset
        self.res_offset = res_offset
        lease = settings.lease
        self.lease_layout = LeaseLayout(lease.offset, storage.sector_size, lease.max_hosts)
        self.mailbox = MailboxLayout(mailbox_base(settings.mailbox, lease.offset),
                                     storage.sector_size, settings.mailbox.max_hosts)

    async def slots(self) -> dict[int, Slot]:
        if self.engine == "sanlock":
            ss = self.lease_storage.sector_size
            max_hosts = self.settings.lease.max_hosts
            raw = await self.lease_storage.read(self.ls_offset, max_hosts * ss)
            return _sanlock_slots(raw, ss, max_hosts)
        layout = self.lease_layout
        raw = await self.storage.read(layout.delta_start, layout.max_hosts * layout.sector_size)
        return _native_slots(raw, layout)

    async def leader(self) -> Leader:
        if self.engine == "sanlock":
            ss = self.lease_storage.sector_size
            lead = parse_leader(await self.lease_storage.read(self.res_offset, ss))
            if lead["magic"] != PAXOS_MAGIC:
                return Leader(None, 0, f"bad magic {lead['magic']:#010x}")
            free = lead["timestamp"] == 0
            return Leader(None if free else int(lead["owner_id"]), int(lead["lver"]))
        layout = self.lease_layout
        raw = await self.storage.read(layout.leader_offset, layout.sector_size)
        try:
            rec = unpack_leader(raw, layout.leader_offset, layout.max_hosts)
        except RecordError as err:
            return Leader(None, 0, err.reason)
        return Leader(None if rec.free else rec.owner_id, rec.lver)

    async def records(self) -> dict[int, summary.SummaryRecord | str]:
        m = self.mailbox
        ss = m.sector_size
        raw = await self.storage.read(m.summary_base, m.max_hosts * ss)
        out: dict[int, summary.SummaryRecord | str] = {}
        for index in range(m.max_hosts):
            try:
                rec = summary.decode(raw[index * ss:(index + 1) * ss], index + 1)
            except CorruptSector as err:
                out[index + 1] = err.reason
                continue
            if rec is not None:
                out[index + 1] = rec
        return out

    async def vg_record(self) -> vgrecord.VgRecord | None | str:
        ss = self.storage.sector_size
        raw = await self.storage.read(vgrecord.record_offset(self.settings.lease.offset, ss), ss)
        try:
            return vgrecord.decode(raw)
        except vgrecord.BadRecord as err:
            return str(err)


def default_observe_s(slots: Mapping[int, Slot], io_timeout_s: float) -> float:
    """One renewal interval plus T of the slowest held host (3T): every live host renews
    within it."""
    ts = [s.io_timeout_s for s in slots.values() if not s.free and s.io_timeout_s > 0]
    return 3.0 * max([io_timeout_s, *ts])


def said_gone(records: Mapping[int, summary.SummaryRecord | str],
              watches: Mapping[int, Watch], host: int) -> bool:
    """A host seen live says ``host`` (of its current generation) is dead or failing."""
    low = watches[host].slot.generation & 0xFFFFFFFF
    for wid, rec in records.items():
        w = watches.get(wid)
        if isinstance(rec, str) or w is None or not w.changed or wid == host \
                or rec.generation != w.slot.generation:
            continue
        if any(p.host_id == host and p.generation_low == low for p in rec.peers):
            return True
    return False


async def observe(read: Callable[[], Any], first: dict[int, Slot], clock: Clock,
                  observe_s: float, until_all: bool,
                  records: Mapping[int, summary.SummaryRecord | str] | None = None,
                  ) -> tuple[dict[int, Watch], float]:
    """Read the slots again every POLL_S for ``observe_s`` (``until_all``: stop once every
    held slot changed, or is said dead or failing by a host seen live in ``records``).
    Returns the watches and the time watched."""
    start = clock.now()
    watches = {h: Watch(s, last_change=start) for h, s in first.items()}
    while clock.now() - start < observe_s:
        if until_all and all(w.changed or said_gone(records or {}, watches, h)
                             for h, w in watches.items() if not w.slot.free):
            break
        await anyio.sleep(POLL_S)
        slots: dict[int, Slot] = await read()
        done = clock.now()
        for host, slot in slots.items():
            w = watches.get(host)
            if w is None:
                watches[host] = Watch(slot, changed=True, last_change=done)
            elif w.slot.raw != slot.raw:
                w.slot, w.changed, w.last_change = slot, True, done
    return watches, clock.now() - start


async def read_pool(settings: Settings, clock: Clock, observe_s: float | None) -> Reading:
    """Read the whole pool (see the module docs); ``observe_s`` None: the default window."""
    lease = settings.lease
    storage = await open_storage(lease.path, lease.sector_size, lease.io_timeout_s)
    opened: list[SectorStorage] = [storage]
    try:
        try:
            engine_rec = await read_record(storage, lease.offset)
        except BadEngineRecord:
            engine_rec = None
        engine = engine_rec.engine if engine_rec is not None else lease.engine
        lease_storage, ls_offset, res_offset = storage, 0, 0
        if engine == "sanlock":
            cfg = lease
            if engine_rec is not None and engine_rec.engine == "sanlock":
                cfg = lease.model_copy(update={"sanlock_lockspace": engine_rec.lockspace,
                                               "sanlock_path": engine_rec.location})
            path, ls_offset, res_offset = sanlock_location(cfg)
            if path != lease.path:
                lease_storage = await open_storage(path, lease.sector_size, lease.io_timeout_s)
                opened.append(lease_storage)
        reader = AreaReader(settings, storage, engine, lease_storage, ls_offset, res_offset)
        first = await reader.slots()
        window = default_observe_s(first, lease.io_timeout_s) if observe_s is None \
            else observe_s
        watches, watched = await observe(reader.slots, first, clock, window,
                                         until_all=observe_s is None,
                                         records=await reader.records())
        return Reading(
            engine=engine, watches=watches, observed_s=watched, leader=await reader.leader(),
            records=await reader.records(), vg=await reader.vg_record(),
            wall_us=int(time.time() * 1e6), now=clock.now(), local_host=lease.host_id,
            timeouts={"io_timeout_s": lease.io_timeout_s,
                      "watchdog_fire_timeout_s": lease.watchdog_fire_timeout_s})
    finally:
        with anyio.CancelScope(shield=True):
            for s in opened:
                await s.close()
