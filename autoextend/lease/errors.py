"""Errors of the lease component."""

from __future__ import annotations

from autoextend.errors import AutoextendError


class LeaseError(AutoextendError):
    """Root of lease errors."""


class RecordError(LeaseError):
    """An on-disk record is unreadable (bad magic, version, checksum or field). Never "free"."""

    def __init__(self, kind: str, offset: int, reason: str) -> None:
        self.kind = kind
        self.offset = offset
        self.reason = reason
        super().__init__(f"bad {kind} record at offset {offset}: {reason}")


class HostIdBusy(LeaseError):
    """The host id slot is owned by another live host (or a racing host won it)."""

    def __init__(self, host_id: int, owner_name: str, reason: str) -> None:
        self.host_id = host_id
        self.owner_name = owner_name
        self.reason = reason
        super().__init__(f"host id {host_id} is busy (owner {owner_name!r}): {reason}")


class HostIdLost(LeaseError):
    """Our host id lease was overwritten by someone else, or could not be renewed in time."""

    def __init__(self, host_id: int, reason: str) -> None:
        self.host_id = host_id
        self.reason = reason
        super().__init__(f"host id {host_id} lease lost: {reason}")


class NotFormatted(LeaseError):
    """The area does not hold a lease area of this geometry (run ``autoextend lease init``)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: no usable lease area: {reason}")
