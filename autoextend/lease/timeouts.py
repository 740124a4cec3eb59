"""Every lease timeout, derived from one io_timeout T and the watchdog fire timeout W.

Pure functions, no I/O. The numbers follow sanlock (``timeouts.h``); the reasoning for each
is in autoextend/lease/README.md ("Timing argument").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LeaseTimeouts:
    io_timeout: float            # T: one I/O longer than this is a failure
    watchdog_fire: float         # W: a holder past its expiry is stopped within this
    renewal_interval: float      # 2T between renewals
    renewal_retry: float         # after a failed renewal (sanlock 0.5 s)
    renewal_warn: float          # 6T after the last successful renewal: warn
    lease_expiry: float          # 8T after the start of the last successful renewal: fence
    host_fail: float             # 8T without a timestamp change: FAIL
    host_dead: float             # 8T+W without a change: DEAD (its holder has fenced)
    delta_held_wait: float       # wait on a slot held by someone else before taking it
    delta_verify_wait: float     # 2T between our claim write and the verifying read
    acquire_poll: float          # how often a waiting contender re-reads the paxos area
    backoff_max: float           # random 0..min(1 s, T/5) after an aborted ballot
    takeover_min: float          # 8T+W: earliest takeover after the holder's last renewal start
    takeover_max_fast: float     # latest takeover when every I/O is fast (<< T)
    takeover_max_worst: float    # latest takeover when every I/O takes T


def lease_timeouts(
    io_timeout: float, watchdog_fire: float, acquire_poll: float = 0.0
) -> LeaseTimeouts:
    """Derive every timeout. ``acquire_poll=0`` means T."""
    if io_timeout <= 0 or watchdog_fire <= 0 or acquire_poll < 0:
        raise ValueError("io_timeout and watchdog_fire must be > 0, acquire_poll >= 0")
    t, w = io_timeout, watchdog_fire
    poll = acquire_poll or t
    renewal = 2 * t
    host_dead = 8 * t + w
    return LeaseTimeouts(
        io_timeout=t,
        watchdog_fire=w,
        renewal_interval=renewal,
        renewal_retry=min(0.5, t / 2),
        renewal_warn=6 * t,
        lease_expiry=8 * t,
        host_fail=8 * t,
        host_dead=host_dead,
        delta_held_wait=max(host_dead, renewal + 6 * t),
        delta_verify_wait=2 * t,
        acquire_poll=poll,
        backoff_max=min(1.0, t / 5),
        takeover_min=host_dead,
        # The holder's last renewal is seen by the next renewal read (<= 2T later); DEAD needs
        # a read issued host_dead after that, which the poll loop makes within one poll.
        takeover_max_fast=host_dead + renewal + poll,
        # Same, with the last write landing T late, the observing read taking T, the
        # confirming read T, and a ballot of 3 reads + 3 writes each taking T.
        takeover_max_worst=host_dead + renewal + poll + 3 * t + 6 * t,
    )
