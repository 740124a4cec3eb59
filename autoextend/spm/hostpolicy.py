"""The host side's pure rules: reply poll pacing, re-ring backoff, what cannot be sent, and
the host's counters."""

from __future__ import annotations

from dataclasses import dataclass

from autoextend.spm.wire import (
    CREATE_NAME_FIELD,
    MAX_SIZE,
    NAME_FIELD,
    OP_CREATE,
    OP_EXTEND,
    ReasonCode,
    Reply,
    Status,
)
from autoextend.volumes import VolumeRef


def reply_poll_interval(waited: float, base: float, maximum: float) -> float:
    """How long to sleep between reply polls after waiting ``waited`` seconds: ``base`` at
    first, then a tenth of the time waited, never more than ``maximum`` (pure)."""
    return min(maximum, max(base, waited * 0.1))


def next_retry_delay(previous: float, initial: float, maximum: float) -> float:
    """The re-ring backoff: ``initial``, doubling, capped at ``maximum`` (pure)."""
    return min(maximum, initial if previous <= 0 else previous * 2)


def local_rejection(volume: VolumeRef, size: int, op: int = OP_EXTEND,
                    parent: str = "") -> Reply | None:
    """A request that cannot even be written to the mailbox, answered here (pure). A
    create's name (with its parent, ``vg/lv/parent``) must fit ``CREATE_NAME_FIELD``."""
    name = f"{volume.vg}/{volume.lv}" + (f"/{parent}" if parent else "")
    limit = CREATE_NAME_FIELD if op == OP_CREATE else NAME_FIELD
    if (not name.isascii() or len(name) > limit or "/" in volume.vg or "/" in volume.lv
            or "/" in parent or (parent and op != OP_CREATE)):
        return Reply(0, 0, Status.REJECTED, 0, ReasonCode.BAD_NAME,
                     f"volume name not ASCII or longer than {limit} bytes")
    if not 0 < size <= MAX_SIZE:
        return Reply(0, 0, Status.REJECTED, 0, ReasonCode.BAD_SIZE, f"bad size {size}")
    return None


@dataclass
class HostMailboxCounters:
    requests: int = 0  # calls to request()
    sent: int = 0  # distinct requests written (new or superseding)
    coalesced: int = 0  # calls that joined a request in flight
    superseded: int = 0  # in-flight requests rewritten with a larger size
    replies: int = 0  # replies matched to a request
    corrupt_sectors: int = 0
    timeouts: int = 0
    withdrawn: int = 0
    rings: int = 0
    ring_repairs: int = 0  # always 0: rings cannot be undone any more (kept for status)
    io_errors: int = 0
