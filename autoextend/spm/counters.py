"""The SPM mail server's counters (one dataclass, shared by the server and its ring watch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerCounters:
    polls: int = 0
    boxes_read: int = 0
    received: int = 0  # requests taken up (each distinct request once)
    duplicates: int = 0  # requests seen again whose reply is already written
    replied: int = 0
    ok: int = 0
    failed: int = 0
    rejected: int = 0
    corrupt_sectors: int = 0  # torn/corrupt sectors skipped (each time seen)
    stale_sectors: int = 0  # sectors of an older host generation, ignored
    handed_back: int = 0  # requests left unanswered at step-down, for the next SPM
    io_errors: int = 0
    sweeps: int = 0  # sweeps: every ring sector the live sweep does not read (all, if none)
    hot_polls: int = 0  # reads of the active hosts' ring sectors (the fast path)
    live_polls: int = 0  # reads of the live hosts' ring sectors (the live sweep)
    live_hosts_errors: int = 0  # live_hosts calls that failed or returned something odd
    rings: int = 0  # ring sector changes noticed (each leads to a read of that host's box)
    corrupt_rings: int = 0  # ring sectors that failed their checks (counted once per change)
    peek_nudges: int = 0  # times the ring peeker woke the server for a changed ring sector
    peek_errors: int = 0  # times the ring peeker stopped (the server reads on its own then)
