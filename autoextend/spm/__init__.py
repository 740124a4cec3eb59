"""Storage mailbox between hosts and the SPM: wire format, host client, SPM server, extender.

See ``autoextend/spm/README.md`` for the layout on the metadata area and the I/O budget.
"""

from __future__ import annotations

from autoextend.spm.extender import MailboxExtender
from autoextend.spm.host import HostMailbox, HostMailboxCounters
from autoextend.spm.layout import SLOTS_PER_HOST, MailboxLayout
from autoextend.spm.server import ServerCounters, SpmMailServer
from autoextend.spm.wire import ReasonCode, Reply, Request, Status

__all__ = [
    "SLOTS_PER_HOST",
    "HostMailbox",
    "HostMailboxCounters",
    "MailboxExtender",
    "MailboxLayout",
    "ReasonCode",
    "Reply",
    "Request",
    "ServerCounters",
    "SpmMailServer",
    "Status",
]
