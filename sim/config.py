"""What one simulated world is (its seed and shape) and the figures it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoextend.lease.priority import DEFAULT_PRIORITY, Priority, parse_priority

# Each mutation turns off one safety check in the world's hosts (the sim's views, for
# check_views and protect_views: sim/views.py): a field of
# autoextend.checks.Checks, or (None) the SPM's reduce idempotency check, which the server
# is given as its list of reduce checks (sim/reduces.py: reduce_checks).
MUTATIONS: dict[str, str | None] = {
    "owner-read": "fresh_owner_read", "term-check": "term_check",
    "generation": "match_generation", "reduce-idempotency": None,
    "view-check": "check_views", "protect-views": "protect_views",
}


@dataclass(frozen=True)
class SimConfig:
    seed: int
    hosts: int = 3
    duration: float = 20_000.0       # simulated seconds with faults
    io_timeout: float = 10.0         # T (sanlock's default)
    watchdog: float = 60.0           # W (sanlock's default)
    volumes_per_host: int = 4
    request_gap_s: float = 40.0      # mean time between request bursts, per host
    fault_gap_s: float = 150.0       # mean time between faults
    mutation: str | None = None
    # [lease] spm_priority of host 1, 2, ... (a host past the end: the default).
    priorities: tuple[Priority, ...] = ()
    # > 0: no faults; instead the SPM steps down this many times (sim/elections.py).
    elections: int = 0

    def priority(self, host_id: int) -> Priority:
        if host_id <= len(self.priorities):
            return self.priorities[host_id - 1]
        return DEFAULT_PRIORITY

    def command(self) -> str:
        extra = f" --fault-gap {self.fault_gap_s:g}" if self.fault_gap_s != 150.0 else ""
        extra += f" --mutation {self.mutation}" if self.mutation else ""
        if self.priorities:
            extra += " --priorities " + ",".join(str(p) for p in self.priorities)
        extra += f" --elections {self.elections}" if self.elections else ""
        return (f"python -m sim --seed {self.seed} --hosts {self.hosts} "
                f"--duration {self.duration:g}{extra}")


def parse_priorities(text: str) -> tuple[Priority, ...]:
    """``--priorities 0,5,never`` (ValueError with the reason)."""
    out: list[Priority] = []
    for part in text.split(","):
        word = part.strip()
        out.append(parse_priority(word if word == "never" else int(word)))
    return tuple(out)


@dataclass
class Stats:
    requests: int = 0
    answered: int = 0
    rejected: int = 0
    timeouts: int = 0
    closed: int = 0
    terms: int = 0
    changes: int = 0
    reduces: int = 0          # reduce requests (sim/reduces.py)
    reduced: int = 0          # ... whose answer was OK and that shrank the volume
    reduce_refused: int = 0   # ... refused by the SPM (the volume unchanged)
    claims: int = 0           # claims of another host's idle volume that went on
    claims_refused: int = 0   # ... refused (the SPM's intent named the volume, or I/O)
    checks: int = 0
    # Views (sim/views.py).
    vm_starts: int = 0
    vm_stops: int = 0
    stale_starts: int = 0     # starts whose appearance check refreshed a stale view
    migrations: int = 0
    migrations_failed: int = 0
    view_refreshes: int = 0
    view_extends: int = 0     # extensions of guest volumes (through the mailbox)
    deferred: int = 0         # ... that landed on a migration's source (no refresh there)
    guest_reads: int = 0      # reads checked against the written mark
    write_failures: int = 0   # guest writes past the view's end (ENOSPC)
    restart_behind: int = 0   # running guests a restarted agent finds on a view < metadata
    faults: dict[str, int] = field(default_factory=dict)
    agent_exits: int = 0
    watchdog_kills: int = 0
    # SPM priority (sim/elections.py): (host stepped down or None at the start, winner).
    elections: list[tuple[int | None, int]] = field(default_factory=list)
