"""Who has which pool volume open: each host's in-use record, and the SPM's judgement (pure).

Every host publishes, in its own record of the in-use region (``layout.py``: one 4 KiB record
per host after the reply boxes, written only by that host), the set of pool volumes it has
open: its VMs' drives (the monitor's ``volumes_in_use()``) and the volumes any other local
process holds (the holders scan). The SPM reads every record before it reduces a volume and
refuses while any host that is not known dead lists it, or while a record it needs is stale
or unreadable (:func:`judge`). Reading records never changes them: no sector has two writers.

Record (little-endian), written as its used prefix rounded up to whole sectors::

    0   4s   magic          "AXIU"
    4   u8   version        1
    5   u8   flags          bit 0: overflow (the host holds more volumes than fit: every
                            volume counts as in use there); bit 1: device views follow
                            the claims; other bits 0
    6   u16  count          volume hashes that follow (0..MAX_VOLUMES)
    8   u16  host id        the writer (== the record's place)
    10  u16  claims         pause claims after the hashes (0..handoff.MAX_CLAIMS)
    12  u32  crc32          of the bytes up to the record's end (below) with this field
                            zero
    16  u64  generation     the host's delta lease generation (0: not known to the host)
    24  u64  seq            1, 2, ... with every publish of this incarnation (never 0)
    32  u64  published_us   the host's wall clock (shown in refusals; never compared)
    40  u64  hashes[count]  strictly ascending
    ..  32 B claims[claims] pause claims (``handoff.py``: how an ENOSPC pause follows its
                            VM through a live migration), strictly ascending
    ..  u64  devices        with flag bit 1 only: device views that follow (1..MAX_DEVICES)
    ..  16 B views[devices] {u64 hash of a PV's UUID, u64 bytes}, hashes strictly
                            ascending, bytes 1..2^63-1

**Device views (GROW-PV, ``devicegate.py``).** A host running the lvm backend (or the
lab's loop stand-in) lists, for each PV of its pool VGs, the 64-bit hash of the PV's UUID
(``device_hash``: lvm2's UUID without its dashes, so every host names a PV alike whatever
its device path there) and the size in bytes of the device as *this host's kernel* sees
it. The SPM runs ``pvresize`` only once every live host lists a size at least the one the
SPM sees. A record without flag bit 1 (a host that publishes no views: an older release,
or a backend without PVs) has none, and a GROW-PV is refused while such a host is live; a
release from before the views reads a record with flag bit 1 as unreadable (unknown flag),
so its SPM refuses reduces while such records are published, which is safe. The views take
``8 + 16 d`` bytes from the hashes' room.

**Bound: hashes, not names.** A volume is its 64-bit hash (blake2b of ``vg/lv``): fixed
width, so the record's size depends only on the count, decoding needs no name checks, and
4096 bytes hold 507 of them (a host running 507 open volumes). A host holding more sets the
overflow flag and lists the first 507: the SPM then treats every volume as in use on that
host (reduces are refused pool-wide while it lasts, which is safe and says so). A collision
of two names' hashes can only make the SPM refuse a reduce it could have done (with 507
hashes per host the chance is about 507 x hosts / 2^64 per reduce). Names could not bound the
record: an LV name alone may be 128 bytes.

**Freshness by sequence, not clock.** Hosts' clocks are not compared. ``seq`` goes up with
every publish, so the SPM knows a record was written after some moment of its own only by
seeing ``seq`` move: a record read at ``t1`` with seq ``s`` and then read again with seq
``>= s + 2`` was *collected* after ``t1`` (publish ``s + 1`` may have collected before ``t1``
and written after it; publish ``s + 2`` started collecting after ``s + 1`` was written).
``generation`` ties the record to one incarnation of the host id (the lease's), so a record
left by a previous run is never taken for a current one.

Range checks on decode (every field, like the mailbox sectors; anything else is corrupt,
i.e. unreadable, and the SPM refuses while it lasts): magic, version, host id exact; flags
only bit 0; count 0..507; claims 0..32 and within the record; crc; seq >= 1; generation any
u64 below 2^63; hashes strictly ascending; every claim (``handoff.decode``). A host running
an autoextend from before the claims reads a record that holds any as unreadable (its
reserved field is not zero): its SPM refuses reduces while such a record is published,
which is safe. An all-zero first sector is "never published" (``None``).

Publish period: ``PUBLISH_PERIOD_S`` (2 s). Cost per host: one write of one sector per
period (512 B with up to 59 open volumes at 512 B sectors, else up to 8 sectors; one 4 KiB
sector at 4 KiB): 256 B/s to 2 KiB/s per host, 64 KiB/s to 500 KiB/s for 250 hosts. The SPM
reads records only while a reduce is judged (a few reads of ``max_hosts x 4 KiB``), never when
idle.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from autoextend.spm import handoff
from autoextend.spm.errors import CorruptSector
from autoextend.spm.sealing import crc_of, seal

MAGIC = b"AXIU"
VERSION = 1
RECORD_BYTES = 4096
HEAD = struct.Struct("<4sBBHHHIQQQ")
HEAD_SIZE = HEAD.size  # 40
CRC_OFFSET = 12
MAX_VOLUMES = (RECORD_BYTES - HEAD_SIZE) // 8  # 507
FLAG_OVERFLOW = 1
FLAG_DEVICES = 2
DEVICE = struct.Struct("<QQ")
MAX_DEVICES = 64  # PVs of the pool's VGs one host lists (more: refused at publish)
MAX_DEVICE_SIZE = (1 << 63) - 1
MAX_RECORD_GENERATION = (1 << 63) - 1
MAX_SEQ = (1 << 64) - 1
PUBLISH_PERIOD_S = 2.0

assert HEAD_SIZE == 40 and MAX_VOLUMES == 507


def volume_hash(name: str) -> int:
    """The 64-bit hash of ``vg/lv`` a record lists."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(),
                          "little")


def device_hash(pv_uuid: str) -> int:
    """The 64-bit hash of a PV's UUID (dashes and case ignored) a record's views list."""
    return volume_hash("pv:" + pv_uuid.replace("-", "").lower())


def views_bytes(devices: int) -> int:
    """Bytes the device views take (none: 0; else their count and the entries)."""
    return 8 + DEVICE.size * devices if devices else 0


@dataclass(frozen=True)
class InUseRecord:
    host_id: int
    generation: int
    seq: int
    published_us: int
    hashes: frozenset[int]
    overflow: bool = False
    claims: tuple[handoff.PauseClaim, ...] = ()  # pause claims (handoff.py)
    devices: Mapping[int, int] = field(default_factory=dict)  # pv hash -> bytes seen here

    def lists(self, name: str) -> bool:
        """The host may have ``name`` open (listed, or it overflowed)."""
        return self.overflow or volume_hash(name) in self.hashes

    def sees(self, pv_uuid: str) -> int | None:
        """The size this host's kernel gave the PV's device, or None (not listed)."""
        return self.devices.get(device_hash(pv_uuid))


def make_record(host_id: int, generation: int, seq: int, published_us: int,
                names: Iterable[str],
                claims: Iterable[handoff.PauseClaim] = (),
                devices: Mapping[str, int] | None = None) -> InUseRecord:
    """The record of ``names``, ``claims`` (at most ``handoff.MAX_CLAIMS``) and the device
    views ``{pv uuid: bytes}``; the hashes that do not fit beside them overflow (the first
    ones by hash kept). Raises ValueError for more than MAX_DEVICES views or a size out of
    range."""
    views = {device_hash(u): size for u, size in (devices or {}).items()}
    if len(views) > MAX_DEVICES:
        raise ValueError(f"{len(views)} PVs do not fit in the in-use record (at most"
                         f" {MAX_DEVICES})")
    if any(not 1 <= size <= MAX_DEVICE_SIZE for size in views.values()):
        raise ValueError("a device size is out of range")
    kept = handoff.fit(claims)
    room = max_volumes(len(kept), len(views))
    hashes = sorted({volume_hash(n) for n in names})
    return InUseRecord(host_id, generation, seq, published_us,
                       frozenset(hashes[:room]), len(hashes) > room, kept, views)


def max_volumes(claims: int, devices: int = 0) -> int:
    """How many hashes fit beside ``claims`` pause claims and ``devices`` device views."""
    return (RECORD_BYTES - HEAD_SIZE - handoff.ENTRY_SIZE * claims
            - views_bytes(devices)) // 8


def used_bytes(count: int, sector_size: int, claims: int = 0, devices: int = 0) -> int:
    """Bytes to write for a record of ``count`` hashes, ``claims`` claims and ``devices``
    device views: whole sectors."""
    length = HEAD_SIZE + 8 * count + handoff.ENTRY_SIZE * claims + views_bytes(devices)
    return -(-length // sector_size) * sector_size


def encode(record: InUseRecord, sector_size: int) -> bytes:
    """The record as whole sectors (only its used prefix: ``used_bytes``)."""
    hashes = sorted(record.hashes)
    if len(record.claims) > handoff.MAX_CLAIMS:
        raise ValueError(f"{len(record.claims)} pause claims (at most {handoff.MAX_CLAIMS})")
    views = sorted(record.devices.items())
    if len(views) > MAX_DEVICES:
        raise ValueError(f"{len(views)} device views do not fit (at most {MAX_DEVICES})")
    if any(not 0 <= h <= MAX_SEQ or not 1 <= n <= MAX_DEVICE_SIZE for h, n in views):
        raise ValueError("a device view is out of range")
    if len(hashes) > max_volumes(len(record.claims), len(views)):
        raise ValueError(f"{len(hashes)} volumes do not fit (at most "
                         f"{max_volumes(len(record.claims), len(views))} beside the claims"
                         " and device views)")
    if not 1 <= record.host_id <= 0xFFFF:
        raise ValueError(f"host id out of range: {record.host_id}")
    if not 0 <= record.generation <= MAX_RECORD_GENERATION:
        raise ValueError(f"generation out of range: {record.generation}")
    if not 1 <= record.seq <= MAX_SEQ:
        raise ValueError(f"seq out of range: {record.seq}")
    if not 0 <= record.published_us <= MAX_SEQ:
        raise ValueError(f"timestamp out of range: {record.published_us}")
    if any(not 0 <= h <= MAX_SEQ for h in hashes):
        raise ValueError("a hash is not a u64")
    entries = handoff.encode(record.claims)  # raises on a claim out of range
    claims = len(entries) // handoff.ENTRY_SIZE
    buf = bytearray(used_bytes(len(hashes), sector_size, claims, len(views)))
    flags = (FLAG_OVERFLOW if record.overflow else 0) | (FLAG_DEVICES if views else 0)
    HEAD.pack_into(buf, 0, MAGIC, VERSION, flags, len(hashes), record.host_id, claims, 0,
                   record.generation, record.seq, record.published_us)
    struct.pack_into(f"<{len(hashes)}Q", buf, HEAD_SIZE, *hashes)
    at = HEAD_SIZE + 8 * len(hashes)
    buf[at:at + len(entries)] = entries
    at += len(entries)
    if views:
        struct.pack_into("<Q", buf, at, len(views))
        for i, (h, n) in enumerate(views):
            DEVICE.pack_into(buf, at + 8 + i * DEVICE.size, h, n)
        at += views_bytes(len(views))
    seal(buf, CRC_OFFSET, at)
    return bytes(buf)


def _corrupt(host_id: int, reason: str) -> CorruptSector:
    return CorruptSector("in-use", host_id, 0, reason)


def decode(data: bytes, expect_host: int) -> InUseRecord | None:
    """Check and decode a host's record (``data``: at least its used prefix; normally the
    whole RECORD_BYTES). None: never published (all-zero head). Raises CorruptSector."""
    if len(data) < HEAD_SIZE:
        raise _corrupt(expect_host, "shorter than its header")
    if not any(data[:HEAD_SIZE]):
        return None
    (magic, version, flags, count, host_id, nclaims, crc, generation, seq,
     published_us) = HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise _corrupt(expect_host, "bad magic")
    if count > MAX_VOLUMES:
        raise _corrupt(expect_host, f"count {count} > {MAX_VOLUMES}")
    if nclaims > handoff.MAX_CLAIMS:
        raise _corrupt(expect_host, f"claims count {nclaims} > {handoff.MAX_CLAIMS}")
    claims_end = HEAD_SIZE + 8 * count + handoff.ENTRY_SIZE * nclaims
    length = claims_end
    devices = 0
    if flags & FLAG_DEVICES:
        if len(data) < claims_end + 8 or claims_end + 8 > RECORD_BYTES:
            raise _corrupt(expect_host, "device views do not fit the record")
        (devices,) = struct.unpack_from("<Q", data, claims_end)
        if not 1 <= devices <= MAX_DEVICES:
            raise _corrupt(expect_host, f"device views count {devices} not in"
                                        f" 1..{MAX_DEVICES}")
        length += views_bytes(devices)
    if length > RECORD_BYTES:
        raise _corrupt(expect_host, "hashes, claims and device views do not fit the record")
    if len(data) < length:
        raise _corrupt(expect_host, "shorter than its count says")
    if crc != crc_of(data, CRC_OFFSET, length):
        raise _corrupt(expect_host, "bad checksum")
    if version != VERSION:
        raise _corrupt(expect_host, f"unsupported version {version}")
    if host_id != expect_host:
        raise _corrupt(expect_host, f"record says host {host_id} (layout mismatch?)")
    if flags & ~(FLAG_OVERFLOW | FLAG_DEVICES):
        raise _corrupt(expect_host, "unknown flags")
    if seq == 0:
        raise _corrupt(expect_host, "seq 0")
    if generation > MAX_RECORD_GENERATION:
        raise _corrupt(expect_host, f"generation {generation} out of range")
    hashes = struct.unpack_from(f"<{count}Q", data, HEAD_SIZE)
    if any(a >= b for a, b in zip(hashes, hashes[1:], strict=False)):
        raise _corrupt(expect_host, "hashes not strictly ascending")
    claims = handoff.decode(bytes(data[HEAD_SIZE + 8 * count:claims_end]), nclaims)
    if isinstance(claims, str):
        raise _corrupt(expect_host, claims)
    views = [DEVICE.unpack_from(data, claims_end + 8 + i * DEVICE.size)
             for i in range(devices)]
    if any(a[0] >= b[0] for a, b in zip(views, views[1:], strict=False)):
        raise _corrupt(expect_host, "device views not strictly ascending")
    if any(not 1 <= n <= MAX_DEVICE_SIZE for _, n in views):
        raise _corrupt(expect_host, "a device size out of range")
    return InUseRecord(host_id, generation, seq, published_us, frozenset(hashes),
                       bool(flags & FLAG_OVERFLOW), claims, dict(views))


# What the SPM reads: per host, a record, None (never published) or the reason it is
# unreadable (a str).
Look = Mapping[int, "InUseRecord | None | str"]

# The lease's view of a host, as the SPM passes it: its state name ("live", "fail", "dead",
# "free", ...) and its delta lease generation.
HOST_GONE = ("free", "dead")


def judge(name: str, after: Look, states: Mapping[int, tuple[str, int]],
          before: Look | None = None) -> str | None:
    """Why ``name`` must not be reduced now, or None (pure).

    ``after``: the records read right before acting; ``before``: read at least one publish
    period earlier (None for a dry run: no freshness check). ``states``: every host the
    lease knows, ``{host: (state, generation)}``. A host whose lease is FREE or DEAD is
    skipped (a dead host is fenced; a free id runs nothing). Every other host, in id order:

    * its record is unreadable, missing, or of another generation than its lease: refused;
    * with ``before``: its seq did not move by 2 since (the record may predate ``before``),
      or its generation changed in between: refused (stale);
    * it lists the volume (or overflowed): refused, naming the host.
    """
    for host in sorted(states):
        state, generation = states[host]
        if state in HOST_GONE:
            continue
        rec = after.get(host)
        if isinstance(rec, str):
            return f"host {host}'s in-use record is unreadable ({rec}); retry later"
        if rec is None:
            return f"host {host} ({state}) has not published its volumes in use; retry later"
        if generation and rec.generation and rec.generation != generation:
            return (f"host {host}'s in-use record is from another run (generation"
                    f" {rec.generation}, lease {generation}); retry later")
        if before is not None:
            old = before.get(host)
            if not isinstance(old, InUseRecord):
                return (f"host {host}'s in-use record was not readable at the first look;"
                        " retry later")
            if old.generation != rec.generation or rec.seq < old.seq + 2:
                return (f"host {host}'s in-use record is stale (seq {rec.seq}, was"
                        f" {old.seq}); retry later")
        if rec.lists(name):
            how = ("holds more volumes than its record lists" if rec.overflow
                   else "has it open")
            return f"in use on host {host}: it {how} (record seq {rec.seq})"
    return None
