"""SPM priority (``[lease] spm_priority``): when a host starts a ballot, never the ballot.

oVirt lets an operator rank hosts for the SPM role (a number, or "never"). Here:

- ``never``: the host never contends for the SPM lease (its ``spm()`` waits until the
  priority changes), but it joins with its host id and uses the mailbox like any host.
- a number 0..100 (default 50): when the lease is free to take (the same test as before:
  released, its owner gone, or an instance to finish), a host first *yields* to every other
  host that may contend with a higher number. A host yields for two acquire polls per
  distinct higher level among those hosts (at most three levels: six polls), counted from
  when it first saw that instance free; then it runs its ballot whatever the others do. The
  preferred host, which polls at the same period, sees the free lease within one poll and
  decides the instance in one ballot (a few I/O, well under a poll), so it has normally won
  before the others stop yielding.

Who "may contend": a peer whose delta record is readable, held (not free), LIVE or UNKNOWN
(not FAIL, DEAD or BAD), and whose published priority is a number higher than ours. A peer
whose record carries no priority (an older release, or an unreadable extension) counts as
the default, 50: an older release contends at once, like a host at the default.

Safety: this only delays the moment a host *starts* a ballot. Ballots, the leader record
and every takeover rule are unchanged, so the Disk Paxos single-owner argument is untouched:
any two hosts may still ballot at once (a yield that ran out, a slow storage), and Paxos
decides one. Liveness: the yield is bounded (six polls), so a pool whose higher-priority
hosts are live but do not contend (held off after a step-down, stuck) still gets an SPM.

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Never = Literal["never"]
NEVER: Never = "never"
#: A configured priority: a number 0..100, or "never".
Priority = int | Never

MIN_PRIORITY = 0
MAX_PRIORITY = 100
DEFAULT_PRIORITY = 50
#: On disk (the delta record's extension): the priority as u16; this value is "never".
NEVER_WIRE = 0xFFFF
#: Polls a host yields per distinct higher priority level that may contend, and the most
#: levels counted.
POLLS_PER_LEVEL = 2
MAX_LEVELS = 3

def parse_priority(value: object) -> Priority:
    """A config value as a priority; ValueError with the reason otherwise."""
    if value == NEVER:
        return NEVER
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'must be "never" or a whole number {MIN_PRIORITY}..{MAX_PRIORITY}, '
                         f"not {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise ValueError(f"must be {MIN_PRIORITY}..{MAX_PRIORITY} (or \"never\"), not {value}")
    return value


def to_wire(priority: Priority) -> int:
    return NEVER_WIRE if priority == NEVER else int(priority)


def from_wire(value: int) -> Priority | None:
    """The priority a u16 on disk stands for, or None when no release writes it."""
    if value == NEVER_WIRE:
        return NEVER
    if MIN_PRIORITY <= value <= MAX_PRIORITY:
        return value
    return None


def levels_above(own: Priority, peers: Iterable[tuple[bool, Priority | None]]) -> int:
    """Distinct priority levels above ``own`` among the peers that may contend (each peer:
    whether it may contend by its liveness, LIVE or UNKNOWN with a held record, and its
    published priority, None = not published = the default)."""
    if own == NEVER:
        return 0
    higher: set[int] = set()
    for may_contend, published in peers:
        value = DEFAULT_PRIORITY if published is None else published
        if may_contend and value != NEVER and int(value) > own:
            higher.add(int(value))
    return len(higher)


def yield_window(own: Priority, peers: Iterable[tuple[bool, Priority | None]],
                 poll: float) -> float:
    """Seconds to yield, from the moment the lease was first seen free, before starting a
    ballot (0: go at once). Bounded by ``MAX_LEVELS * POLLS_PER_LEVEL * poll``."""
    return min(levels_above(own, peers), MAX_LEVELS) * POLLS_PER_LEVEL * poll


def contends(priority: Priority) -> bool:
    return priority != NEVER
