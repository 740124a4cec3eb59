"""The map of the shared metadata area: where the leases and the storage mailbox live.

Pure geometry, no I/O, no backend imports (both ``lease/`` and ``spm/`` use it). Offsets are
relative to the lease area start (``[lease] offset``, a multiple of 1 MiB)::

    +0 MiB  the lease area     LEASE_AREA_SIZE (4 MiB): delta leases, then paxos leases
                               (their inner layout: ``autoextend/lease/layout.py``)
    +4 MiB  MAILBOX_OFFSET     the SPM storage mailbox (``[mailbox] offset`` overrides it;
                               its inner layout: ``autoextend/spm/layout.py``)
"""

from __future__ import annotations

MIB = 1 << 20
AREA_ALIGN = MIB
LEASE_AREA_SIZE = 4 * MIB
MAILBOX_OFFSET = LEASE_AREA_SIZE  # from the area start; the mailbox region begins here


def mailbox_offset(area_offset: int) -> int:
    """Absolute offset of the storage mailbox for a lease area starting at ``area_offset``."""
    return area_offset + MAILBOX_OFFSET


def mailbox_start(configured: int | None, lease_area_offset: int = 0) -> int:
    """Where the mailbox region starts: ``configured`` if set, else right after the lease area."""
    if configured is not None:
        return configured
    return mailbox_offset(lease_area_offset)
