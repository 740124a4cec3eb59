"""One deadline for an extension, derived from the lease timings, and the rule that keeps
the timeouts of different sections consistent. Pure functions of the settings.

Derivation (mailbox mode). A request written just before the SPM dies must still be served
by the next SPM before anybody gives up on it:

* the dead SPM's host lease expires at most ``8 T`` after its last renewal (``T`` =
  ``lease.io_timeout_s``; sanlock's host_dead), and a holder that is stuck rather than dead
  may run until the watchdog fires, ``W`` (``lease.watchdog_fire_timeout_s``) later;
* the next SPM then acquires the SPM lease (two paxos phases, one ``T`` each at most) and
  reads every request box when it starts serving.

So a request must be allowed ``failover_s = 8 T + W + 2 T``: 160 s at the shipped
``T = 10 s``, ``W = 60 s``, below the shipped ``mailbox.request_timeout_s = 180 s``. The
mailbox waits ``request_timeout_s`` for a reply; the monitor waits that plus one LVM command
(the refresh after the reply), so the mailbox's own deadline always comes first: one deadline,
``mailbox.request_timeout_s``. In local mode there is no failover and the monitor's
``policy.extend_timeout_s`` is the deadline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoextend.config import Settings

HOST_DEAD_IO_TIMEOUTS = 8   # a host lease is dead 8 T after its last renewal (sanlock)
ACQUIRE_IO_TIMEOUTS = 2     # paxos phase 1 + phase 2 of the SPM lease


def failover_s(io_timeout_s: float, watchdog_fire_timeout_s: float) -> float:
    """Longest time from an SPM's last renewal to a new SPM reading the request boxes."""
    return (HOST_DEAD_IO_TIMEOUTS + ACQUIRE_IO_TIMEOUTS) * io_timeout_s + watchdog_fire_timeout_s


def extension_deadline_s(settings: Settings) -> float:
    """How long the monitor waits for one extension before it counts as failed."""
    if settings.service.extender == "mailbox":
        return settings.mailbox.request_timeout_s + settings.lvm.command_timeout_s
    return settings.policy.extend_timeout_s


def check_timeouts(settings: Settings) -> list[tuple[str, str]]:
    """(dotted key, problem) for every inconsistent timeout; empty when all is well."""
    problems: list[tuple[str, str]] = []
    if settings.service.extender == "mailbox":
        need = failover_s(settings.lease.io_timeout_s, settings.lease.watchdog_fire_timeout_s)
        if settings.mailbox.request_timeout_s < need:
            problems.append((
                "mailbox.request_timeout_s",
                f"must be >= {need:g} s to outlast one SPM failover "
                f"(10 x lease.io_timeout_s + lease.watchdog_fire_timeout_s), "
                f"got {settings.mailbox.request_timeout_s:g}",
            ))
    return problems
