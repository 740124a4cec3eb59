"""Pause claims: how a VM's ENOSPC pause is handed from a migration's source to its
destination through the shared storage only (pure codec and rule, no I/O).

**The problem.** A guest that autoextend paused for ENOSPC on host A and that is then
live-migrated arrives paused on host B. B cannot tell that pause from an operator's: QEMU
migrates its run state (``io-error`` at best, which says "an I/O error policy stopped it",
not "ENOSPC", not "autoextend's"), libvirt reports the arrived domain as PAUSED/USER, and
the hosts share no network. vdsm carries the pause code in its migration parameters; we
carry it in A's own in-use record on the metadata area (``inuse.py``), which B reads.

**Entries** (in the in-use record, after the volume hashes; 32 bytes each, little-endian,
strictly ascending as the tuple ``(kind, vm, volume, origin, pause_id)``)::

    0   u64  vm        blake2b-64 of the VM's name (``inuse.volume_hash`` of the name)
    8   u64  volume    blake2b-64 of ``vg/lv``: a volume that ran out of space
    16  u64  pause_id  the origin host's wall clock in µs when it first claimed the pause
                       (never 0; only an identity, never compared with a clock)
    24  u16  origin    the host that paused the VM (1..MAX_HOST)
    26  u8   kind      1 CLAIM: "the writer paused this VM for ENOSPC on this volume and
                       nobody else may resume it unless it adopts it";
                       2 ADOPTED: "the writer adopted the claim (origin, pause_id): no one
                       else may adopt it again" (a tombstone)
    27  u8   0
    28  u32  0

Range checks on decode: kind 1 or 2, origin 1..MAX_HOST, pause_id not 0, the zero fields
zero, strictly ascending (no duplicates). Anything else makes the whole record corrupt.

**The rule** (:func:`adoptable`), run by the destination B for a VM that arrived paused:

1. At the arrival, B reads every host's record: the *baseline* (generation, seq) per host.
2. B adopts a CLAIM for the VM (on a volume the VM has here) only from a record of another
   host that is *fresh*: written by the same incarnation as its baseline (same generation)
   with ``seq >= baseline seq + 2``, or first published after the baseline. By the in-use
   records' freshness argument (``inuse.py``) such a record was collected after the arrival,
   that is after the migration completed: it says what A knew of its pause once the guest had
   left A for good. A claim in an older record proves nothing (A may have dropped it since:
   the guest ran again on A, then an operator paused it).
3. No record of another host (fresh or not) holds an ADOPTED tombstone for the claim's
   ``(origin, pause_id)``: a claim is adopted at most once. Every record must be readable
   for this (``handoffio.py`` refuses to decide while one is not).

Then B writes its own tombstone for the claim *before* it resumes anything, and treats the
pause as its own ENOSPC pause (extends through the SPM if the drive is still full, refreshes,
re-arms, resumes under ``[resume]``). Nothing else makes B resume an arrived pause as an
ENOSPC pause (after the wait, QEMU's migrated ``io-error`` state is an I/O error pause like
any other, under ``[resume] policy``: ``monitor/handoff.py``).

**Why the source keeps its claim after the guest left** (``monitor/pauseclaims.py``): B needs
a record collected after the arrival. A keeps claiming a departed guest's pause for
``RETAIN_S`` (``monitor/pauseclaims.py``); B keeps its tombstone for :data:`TOMBSTONE_S`
(longer), so every time A's claim can be read, B's tombstone can be too, and a later
migration of the same guest (B to C, after B resumed it and an operator paused it) never
adopts A's old claim.

**What is never resumed as an ENOSPC pause:** an arrived pause that no fresh record claims
within ``monitor/handoff.WAIT_S`` (an operator's pause, a source that died or cannot
write, local mode: no shared area), or whose claim was adopted already.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

ENTRY = struct.Struct("<QQQHBBI")
ENTRY_SIZE = ENTRY.size  # 32
MAX_CLAIMS = 32  # entries per record (1 KiB of the 4 KiB record)
MAX_HOST = 2000
U64 = (1 << 64) - 1

# An adopted claim's tombstone stays published this long: more than the source keeps
# claiming a departed VM (``monitor/pauseclaims.RETAIN_S``, 120 s) plus the time the source
# may take to see the departure (tests/spm/test_handoff.py checks the pair).
TOMBSTONE_S = 300.0

assert ENTRY_SIZE == 32


class Kind(enum.IntEnum):
    CLAIM = 1
    ADOPTED = 2


@dataclass(frozen=True, order=True)
class PauseClaim:
    kind: Kind
    vm: int
    volume: int
    origin: int
    pause_id: int

    @property
    def identity(self) -> tuple[int, int]:
        """The pause, whoever publishes it: (origin host, pause id)."""
        return (self.origin, self.pause_id)

    def adopted_by_me(self) -> PauseClaim:
        """The tombstone that marks this claim adopted."""
        return PauseClaim(Kind.ADOPTED, self.vm, self.volume, self.origin, self.pause_id)


def check(claim: PauseClaim) -> str | None:
    """Why ``claim`` cannot be written or was not written by a sane writer, or None."""
    if claim.kind not in (Kind.CLAIM, Kind.ADOPTED):
        return f"kind {claim.kind}"
    if not 1 <= claim.origin <= MAX_HOST:
        return f"origin host {claim.origin} out of range"
    if not 1 <= claim.pause_id <= U64:
        return "pause id 0 or not a u64"
    if not (0 <= claim.vm <= U64 and 0 <= claim.volume <= U64):
        return "a hash is not a u64"
    return None


def encode(claims: Collection[PauseClaim]) -> bytes:
    """The entries, in their canonical order. Raises ValueError on an entry out of range."""
    out = bytearray()
    for c in sorted(set(claims)):
        problem = check(c)
        if problem is not None:
            raise ValueError(f"pause claim: {problem}")
        out += ENTRY.pack(c.vm, c.volume, c.pause_id, c.origin, int(c.kind), 0, 0)
    return bytes(out)


def decode(data: bytes, count: int) -> tuple[PauseClaim, ...] | str:
    """``count`` entries from ``data``; the reason they are corrupt (a str) otherwise."""
    if len(data) < count * ENTRY_SIZE:
        return "shorter than its claims count says"
    out: list[PauseClaim] = []
    for i in range(count):
        vm, volume, pause_id, origin, kind, pad8, pad32 = ENTRY.unpack_from(
            data, i * ENTRY_SIZE)
        if pad8 or pad32:
            return "a pause claim's reserved bytes are not zero"
        if kind not in (Kind.CLAIM, Kind.ADOPTED):
            return f"pause claim kind {kind}"
        claim = PauseClaim(Kind(kind), vm, volume, origin, pause_id)
        problem = check(claim)
        if problem is not None:
            return f"pause claim: {problem}"
        if out and not out[-1] < claim:
            return "pause claims not strictly ascending"
        out.append(claim)
    return tuple(out)


@dataclass(frozen=True)
class Seen:
    """One host's in-use record as a destination read it."""

    generation: int
    seq: int
    claims: tuple[PauseClaim, ...] = ()


def fresh(now: Seen, base: Seen | None) -> bool:
    """``now`` was collected after ``base`` was read (see rule 2)."""
    if base is None:
        return True  # first published after the baseline read
    return now.generation == base.generation and now.seq >= base.seq + 2


def adoptable(vm: int, volumes: Collection[int], me: int, base: Mapping[int, Seen],
              look: Mapping[int, Seen]) -> tuple[PauseClaim, ...]:
    """The claims ``me`` may adopt for the VM ``vm`` (hash) with ``volumes`` (hashes): the
    module's rule, pure. Empty: none (yet)."""
    # Tombstones of other hosts only: one of ours is an adoption of ours (a retry after a
    # failure past the tombstone's write adopts the same pause again, harmlessly).
    gone = {c.identity for h, s in look.items() if h != me
            for c in s.claims if c.kind is Kind.ADOPTED}
    found: list[PauseClaim] = []
    for host in sorted(look):
        seen = look[host]
        if host == me or not fresh(seen, base.get(host)):
            continue
        found.extend(c for c in seen.claims
                     if c.kind is Kind.CLAIM and c.vm == vm and c.volume in volumes
                     and c.identity not in gone)
    return tuple(found)


def fit(claims: Iterable[PauseClaim]) -> tuple[PauseClaim, ...]:
    """At most :data:`MAX_CLAIMS`, tombstones first (losing one could let a claim be adopted
    twice; losing a claim only leaves a guest paused)."""
    ordered = sorted(set(claims), key=lambda c: (c.kind is not Kind.ADOPTED, c))
    return tuple(sorted(ordered[:MAX_CLAIMS]))
