"""Errors of the storage mailbox (both the host side and the SPM side)."""

from __future__ import annotations

from autoextend.errors import AutoextendError


class MailboxError(AutoextendError):
    """Root of the mailbox errors."""


class CorruptSector(MailboxError):
    """A mailbox sector failed its checks (checksum, magic, version, placement).

    Never acted upon: the reader skips it and counts it.
    """

    def __init__(self, kind: str, host_id: int, index: int, reason: str) -> None:
        self.kind = kind
        self.host_id = host_id
        self.index = index
        self.reason = reason
        super().__init__(f"corrupt {kind} sector {index} of host {host_id}: {reason}")


class LayoutError(MailboxError):
    """The mailbox layout does not fit the storage or the settings (offset, host id)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"mailbox layout: {reason}")


class MailboxClosed(MailboxError):
    """The host mailbox is not running (not started yet, or shut down)."""

    def __init__(self) -> None:
        super().__init__("the host mailbox is not running")


class MailboxTimeout(MailboxError):
    """No reply from the SPM within the time allowed."""

    def __init__(self, volume: str, size: int, timeout_s: float) -> None:
        self.volume = volume
        self.size = size
        self.timeout_s = timeout_s
        super().__init__(f"no reply from the SPM for {volume} (size {size}) within {timeout_s:g} s")
