"""Storage leases: host ids (delta leases) and the SPM role (Disk Paxos), see README.md.

Public API: :class:`LeaseService` (``joined()``, ``spm()``, ``step_down()``,
``current_spm()``, ``host_states()``), :class:`SpmTerm`, :func:`format_area`,
:func:`dump_area`, :data:`MAILBOX_OFFSET`, :func:`mailbox_offset`.
"""

from __future__ import annotations

from autoextend.lease.area import dump_area, format_area
from autoextend.lease.layout import MAILBOX_OFFSET, LeaseLayout, mailbox_offset
from autoextend.lease.liveness import HostState, HostStatus
from autoextend.lease.service import LeaseService, SpmTerm
from autoextend.lease.timeouts import LeaseTimeouts, lease_timeouts

__all__ = [
    "MAILBOX_OFFSET",
    "HostState",
    "HostStatus",
    "LeaseLayout",
    "LeaseService",
    "LeaseTimeouts",
    "SpmTerm",
    "dump_area",
    "format_area",
    "lease_timeouts",
    "mailbox_offset",
]
