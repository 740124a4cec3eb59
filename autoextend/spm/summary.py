"""Each host's summary record: what ``autoextend pool status`` shows of a host (pure codec).

Every host writes one record in its own sector of the summary region (``layout.py``: one
sector per host after the in-use records; no one else writes it). Any host, or a CLI on a
machine that only reads the metadata area, reads them all: no SPM and no network needed.

Record (little-endian), :data:`RECORD_BYTES` (512) at the start of the host's sector; the
rest of a 4 KiB sector is zero::

    0    4s   magic          "AXHS"
    4    u8   version        1
    5    u8   engine         1 native, 2 sanlock (the host's lease engine)
    6    u16  host id        the writer (== the record's place)
    8    u32  crc32          of the 512 bytes with this field zero
    12   u8   flags          bit 0: more VMs paused than listed; bit 1: more peers than
                             listed; other bits 0
    13   u8   version_len    0..32
    14   u8   peers          peer entries that follow the header (0..MAX_PEERS)
    15   u8   paused         paused-VM entries that follow the peers
    16   u64  generation     the host's lease generation (< 2^63; 0: not known yet)
    24   u64  seq            1, 2, ... with every write (never 0)
    32   u64  published_us   the host's wall clock (shown as an age; never compared)
    40   u32  vms            VMs watched
    44   u32  drives         drives watched
    48   u32  extends_hour   extensions that ended well in the last hour
    52   u32  last_ms        the last extension's latency in ms (0xFFFFFFFF: none yet)
    56   u32  paused_total   VMs paused now (>= paused, <= vms)
    60   u32  reserved       0
    64   32s  version        autoextend's version, printable ASCII, NUL padded
    96   peers x 8 bytes     the host's lease view of the peers that are *not* live or free:
                             u16 host id (ascending, not the writer), u8 state (2 fail,
                             3 dead, 4 unknown, 5 bad), u8 0, u32 the low 32 bits of the
                             peer's generation as the writer saw it
    then paused entries      u8 reason (1 enospc, 2 enospc-unmanaged, 3 io-error, 4 user,
                             5 migration, 6 other; bit 7: the name is cut short), u8 name
                             length 1..64, the VM name (UTF-8); zeros after the last entry

Range checks on decode (every field; anything else is :class:`CorruptSector`, counted and
shown as unreadable, never acted on): magic, version, host id exact, crc, flags and the
reserved fields, seq >= 1, generation < 2^63, counts and lengths within the record,
paused <= paused_total <= vms, peer ids in 1..2000 strictly ascending and not the writer,
known states and reasons, names valid UTF-8 without NUL, nothing after the last entry.
An all-zero record is "never published" (``None``).

**Bound.** 512 bytes, one sector at either sector size: at most :data:`MAX_PEERS` peers
(a pool with more hosts not live is flagged, the first by id listed) and as many paused VMs
as fit after them (at least 3, names cut to 64 bytes at a character boundary): the counts
``paused_total`` and ``vms`` stay exact whatever the list holds.

**I/O.** See ``summarypub.py``: at most ``5 + L / 12`` writes of one sector in any ``L``
seconds per host, 0.083 writes/s (one per 12 s) in the long run; reading the whole pool is
one read of ``max_hosts`` sectors.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from autoextend.spm import sealing
from autoextend.spm.errors import CorruptSector

MAGIC = b"AXHS"
VERSION = 1
RECORD_BYTES = 512
HEAD = struct.Struct("<4sBBHIBBBBQQQIIIIII32s")
HEAD_SIZE = HEAD.size  # 96
CRC_OFFSET = 8
PEER = struct.Struct("<HBBI")
PEER_SIZE = PEER.size  # 8
MAX_PEERS = 16
NAME_MAX = 64
VERSION_MAX = 32
FLAG_PAUSED_CUT = 1
FLAG_PEERS_CUT = 2
REASON_CUT = 0x80
NO_LATENCY = 0xFFFFFFFF
U32_MAX = 0xFFFFFFFF
MAX_GENERATION = (1 << 63) - 1
MAX_U64 = (1 << 64) - 1
MAX_HOST_ID = 2000
assert HEAD_SIZE == 96 and PEER_SIZE == 8

ENGINES = {1: "native", 2: "sanlock"}
ENGINE_CODES = {name: code for code, name in ENGINES.items()}
PEER_STATES = {2: "fail", 3: "dead", 4: "unknown", 5: "bad"}
PEER_CODES = {name: code for code, name in PEER_STATES.items()}
REASONS = {1: "enospc", 2: "enospc-unmanaged", 3: "io-error", 4: "user", 5: "migration",
           6: "other"}
REASON_CODES = {name: code for code, name in REASONS.items()}


@dataclass(frozen=True)
class PeerView:
    """A peer the writer's lease does not see live: its state and generation (low 32 bits)."""

    host_id: int
    state: str
    generation_low: int


@dataclass(frozen=True)
class PausedVm:
    vm: str
    reason: str
    cut: bool = False  # the name was cut short to fit


@dataclass(frozen=True)
class HostFacts:
    """What the host's service knows of itself (``hostsummary.py`` collects it)."""

    vms: int = 0
    drives: int = 0
    extends_hour: int = 0
    last_extend_ms: int | None = None
    paused: tuple[PausedVm, ...] = ()      # every VM paused now (the record lists a prefix)
    version: str = ""


@dataclass(frozen=True)
class SummaryRecord:
    host_id: int
    engine: str
    generation: int
    seq: int
    published_us: int
    vms: int
    drives: int
    extends_hour: int
    last_extend_ms: int | None
    paused_total: int
    version: str
    peers: tuple[PeerView, ...] = ()
    paused: tuple[PausedVm, ...] = ()
    peers_cut: bool = False
    paused_cut: bool = field(default=False)

    def content(self) -> tuple[object, ...]:
        """Everything but ``seq`` and ``published_us``: a change here is worth a write."""
        return (self.engine, self.generation, self.vms, self.drives, self.extends_hour,
                self.last_extend_ms, self.paused_total, self.version, self.peers,
                self.paused, self.peers_cut, self.paused_cut)


def _cut_name(name: str) -> tuple[bytes, bool]:
    raw = name.encode("utf-8", "replace").replace(b"\0", b"?")
    if len(raw) <= NAME_MAX:
        return raw, False
    cut = raw[:NAME_MAX]
    while cut:
        try:
            cut.decode("utf-8")
            break
        except UnicodeDecodeError:
            cut = cut[:-1]
    return cut, True


def _clean_version(version: str) -> str:
    text = "".join(c for c in version if 0x20 < ord(c) < 0x7F)
    return text[:VERSION_MAX]


def _ids_ok(generation: int, seq: int) -> bool:
    return 0 <= generation <= MAX_GENERATION and 1 <= seq <= MAX_U64


def _counts_ok(peers: int, paused: int, paused_total: int, vms: int) -> bool:
    return peers <= MAX_PEERS and paused <= paused_total <= vms <= U32_MAX


def _peer_ok(previous: int, peer: int, writer: int) -> bool:
    """Peer ids ascend strictly, within 1..MAX_HOST_ID, and never name the writer."""
    return previous < peer <= MAX_HOST_ID and peer != writer


def _version_ok(text: str) -> bool:
    return len(text) <= VERSION_MAX and text == _clean_version(text)


def _paused_ok(at: int, length: int) -> bool:
    """A paused entry with a ``length``-byte name at byte ``at`` fits the record."""
    return 1 <= length <= NAME_MAX and at + 2 + length <= RECORD_BYTES


def make_record(host_id: int, engine: str, generation: int, seq: int, published_us: int,
                facts: HostFacts, peers: dict[int, tuple[str, int]]) -> SummaryRecord:
    """The record of ``facts`` and the lease view ``peers`` ({host: (state, generation)},
    every state; live, free and the writer itself are left out), cut to fit 512 bytes."""
    listed = [PeerView(h, s, g & U32_MAX) for h, (s, g) in sorted(peers.items())
              if h != host_id and s in PEER_CODES and 1 <= h <= MAX_HOST_ID]
    room = RECORD_BYTES - HEAD_SIZE - PEER_SIZE * min(len(listed), MAX_PEERS)
    paused: list[PausedVm] = []
    for p in facts.paused:
        if p.reason not in REASON_CODES:
            continue
        name, cut = _cut_name(p.vm)
        if not name or 2 + len(name) > room:
            break
        room -= 2 + len(name)
        paused.append(PausedVm(name.decode("utf-8"), p.reason, cut))
    total = min(len(facts.paused), U32_MAX)
    vms = min(max(facts.vms, total), U32_MAX)
    last = facts.last_extend_ms
    return SummaryRecord(
        host_id=host_id, engine=engine, generation=generation, seq=seq,
        published_us=published_us, vms=vms, drives=min(facts.drives, U32_MAX),
        extends_hour=min(facts.extends_hour, U32_MAX),
        last_extend_ms=None if last is None else min(max(last, 0), U32_MAX - 1),
        paused_total=total, version=_clean_version(facts.version),
        peers=tuple(listed[:MAX_PEERS]), paused=tuple(paused),
        peers_cut=len(listed) > MAX_PEERS, paused_cut=len(paused) < total)


def encode(record: SummaryRecord, sector_size: int) -> bytes:
    """One sector (``sector_size`` bytes, the record in its first 512). Raises ValueError for
    values no decoder would accept."""
    r = record
    if not 1 <= r.host_id <= MAX_HOST_ID:
        raise ValueError(f"host id out of range: {r.host_id}")
    if r.engine not in ENGINE_CODES:
        raise ValueError(f"unknown engine {r.engine!r}")
    if not _ids_ok(r.generation, r.seq):
        raise ValueError("generation or seq out of range")
    if not 0 <= r.published_us <= MAX_U64:
        raise ValueError("timestamp out of range")
    if not _counts_ok(len(r.peers), len(r.paused), r.paused_total, r.vms):
        raise ValueError("counts out of range")
    if not _version_ok(r.version):
        raise ValueError(f"version not publishable: {r.version!r}")
    version = r.version.encode("ascii")
    last = NO_LATENCY if r.last_extend_ms is None else r.last_extend_ms
    if not 0 <= last <= U32_MAX or not 0 <= r.drives <= U32_MAX \
            or not 0 <= r.extends_hour <= U32_MAX:
        raise ValueError("a figure is out of range")
    buf = bytearray(sector_size)
    flags = (FLAG_PAUSED_CUT if r.paused_cut else 0) | (FLAG_PEERS_CUT if r.peers_cut else 0)
    HEAD.pack_into(buf, 0, MAGIC, VERSION, ENGINE_CODES[r.engine], r.host_id, 0, flags,
                   len(version), len(r.peers), len(r.paused), r.generation, r.seq,
                   r.published_us, r.vms, r.drives, r.extends_hour, last, r.paused_total, 0,
                   version)
    at = HEAD_SIZE
    previous = 0
    for p in r.peers:
        if p.state not in PEER_CODES or not _peer_ok(previous, p.host_id, r.host_id) \
                or not 0 <= p.generation_low <= U32_MAX:
            raise ValueError(f"peer entry not publishable: {p}")
        PEER.pack_into(buf, at, p.host_id, PEER_CODES[p.state], 0, p.generation_low)
        previous = p.host_id
        at += PEER_SIZE
    for v in r.paused:
        name = v.vm.encode("utf-8")
        if v.reason not in REASON_CODES or not 1 <= len(name) <= NAME_MAX or b"\0" in name:
            raise ValueError(f"paused entry not publishable: {v}")
        if not _paused_ok(at, len(name)):
            raise ValueError("paused entries do not fit")
        buf[at] = REASON_CODES[v.reason] | (REASON_CUT if v.cut else 0)
        buf[at + 1] = len(name)
        buf[at + 2:at + 2 + len(name)] = name
        at += 2 + len(name)
    sealing.seal(buf, CRC_OFFSET, RECORD_BYTES)
    return bytes(buf)


def _corrupt(host_id: int, reason: str) -> CorruptSector:
    return CorruptSector("summary", host_id, 0, reason)


def decode(data: bytes, expect_host: int) -> SummaryRecord | None:
    """Check and decode ``expect_host``'s record (``data``: its sector, at least 512 bytes).
    None: never published (all zero). Raises CorruptSector for anything else."""
    if len(data) < RECORD_BYTES:
        raise _corrupt(expect_host, "shorter than a record")
    if not any(data[:RECORD_BYTES]):
        return None
    (magic, version, engine, host_id, crc, flags, version_len, peers, paused, generation,
     seq, published_us, vms, drives, extends_hour, last, paused_total, reserved,
     version_raw) = HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise _corrupt(expect_host, "bad magic")
    if crc != sealing.crc_of(data, CRC_OFFSET, RECORD_BYTES):
        raise _corrupt(expect_host, "bad checksum")
    if version != VERSION:
        raise _corrupt(expect_host, f"unsupported version {version}")
    if host_id != expect_host:
        raise _corrupt(expect_host, f"record says host {host_id} (layout mismatch?)")
    if engine not in ENGINES:
        raise _corrupt(expect_host, f"unknown engine {engine}")
    if flags & ~(FLAG_PAUSED_CUT | FLAG_PEERS_CUT) or reserved:
        raise _corrupt(expect_host, "unknown flags or reserved field not zero")
    if not _ids_ok(generation, seq):
        raise _corrupt(expect_host, "seq 0 or generation out of range")
    if not _counts_ok(peers, paused, paused_total, vms):
        raise _corrupt(expect_host, "counts out of range")
    text = _version(expect_host, version_raw, version_len)
    at = HEAD_SIZE
    views = []
    previous = 0
    for _ in range(peers):
        peer, state, zero, gen_low = PEER.unpack_from(data, at)
        if state not in PEER_STATES or zero or not _peer_ok(previous, peer, host_id):
            raise _corrupt(expect_host, f"bad peer entry at byte {at}")
        views.append(PeerView(peer, PEER_STATES[state], gen_low))
        previous = peer
        at += PEER_SIZE
    listed = []
    for _ in range(paused):
        entry, at = _paused_entry(data, at, expect_host)
        listed.append(entry)
    if any(data[at:RECORD_BYTES]):
        raise _corrupt(expect_host, "bytes after the last entry are not zero")
    return SummaryRecord(
        host_id=host_id, engine=ENGINES[engine], generation=generation, seq=seq,
        published_us=published_us, vms=vms, drives=drives, extends_hour=extends_hour,
        last_extend_ms=None if last == NO_LATENCY else last, paused_total=paused_total,
        version=text, peers=tuple(views), paused=tuple(listed),
        peers_cut=bool(flags & FLAG_PEERS_CUT), paused_cut=bool(flags & FLAG_PAUSED_CUT))


def _version(host: int, raw: bytes, length: int) -> str:
    if length > VERSION_MAX or any(raw[length:]):
        raise _corrupt(host, "bad version length or padding")
    text = raw[:length].decode("ascii", "replace")
    if not _version_ok(text):
        raise _corrupt(host, "version is not printable ASCII")
    return text


def _paused_entry(data: bytes, at: int, host: int) -> tuple[PausedVm, int]:
    if at + 2 > RECORD_BYTES:
        raise _corrupt(host, "paused entries run past the record")
    code, length = data[at], data[at + 1]
    reason = REASONS.get(code & ~REASON_CUT)
    if reason is None or not _paused_ok(at, length):
        raise _corrupt(host, f"bad paused entry at byte {at}")
    raw = data[at + 2:at + 2 + length]
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(host, f"paused VM name at byte {at} is not UTF-8") from None
    if "\0" in name:
        raise _corrupt(host, f"paused VM name at byte {at} holds a NUL")
    return PausedVm(name, reason, bool(code & REASON_CUT)), at + 2 + length
