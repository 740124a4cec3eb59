"""The map of the shared metadata area: where the leases and the storage mailbox live.

Pure geometry, no I/O, no backend imports (both ``lease/`` and ``spm/`` use it). Offsets are
relative to the lease area start (``[lease] offset``, a multiple of 1 MiB)::

    +0 MiB  the lease area     LEASE_AREA_SIZE (4 MiB): delta leases, then paxos leases
                               (their inner layout: ``autoextend/lease/layout.py``)
    +4 MiB  MAILBOX_OFFSET     the SPM storage mailbox (``[mailbox] offset`` overrides it;
                               its inner layout: ``autoextend/spm/layout.py``); at most
                               MAILBOX_MAX_SIZE (40 MiB: 2000 hosts x 20 KiB at either
                               sector size), whatever ``[mailbox] max_hosts`` is
    +44 MiB JOURNAL_OFFSET     the journal of metadata changes (``[mailbox] journal``, off by
                               default; ``[mailbox] journal_offset`` overrides it): a ring of
                               JOURNAL_RECORDS 256-byte records, JOURNAL_SIZE (25 MiB); its
                               records: ``autoextend/spm/journal.py``

The journal comes after the mailbox's largest possible end, so turning it on moves no
existing record and a later ``max_hosts`` change never reaches it. With the journal on,
the metadata area must reach ``journal offset + 25 MiB`` (69 MiB past the lease area start
by default); start-up and ``lease init`` refuse a smaller one (:func:`check_journal_fits`).
"""

from __future__ import annotations

MIB = 1 << 20
AREA_ALIGN = MIB
LEASE_AREA_SIZE = 4 * MIB
MAILBOX_OFFSET = LEASE_AREA_SIZE  # from the area start; the mailbox region begins here


MAILBOX_MAX_SIZE = 40 * MIB  # the mailbox at max_hosts 2000, either sector size (39.1 MiB)
JOURNAL_OFFSET = MAILBOX_OFFSET + MAILBOX_MAX_SIZE  # 44 MiB from the area start
JOURNAL_RECORD_SIZE = 256  # divides both sector sizes: no record spans two sectors
JOURNAL_SIZE = 25 * MIB
JOURNAL_RECORDS = JOURNAL_SIZE // JOURNAL_RECORD_SIZE  # 102,400 (at least 100,000)


class AreaTooSmall(ValueError):
    """The metadata area ends before a region that must fit in it."""


def mailbox_offset(area_offset: int) -> int:
    """Absolute offset of the storage mailbox for a lease area starting at ``area_offset``."""
    return area_offset + MAILBOX_OFFSET


def mailbox_start(configured: int | None, lease_area_offset: int = 0) -> int:
    """Where the mailbox region starts: ``configured`` if set, else right after the lease area."""
    if configured is not None:
        return configured
    return mailbox_offset(lease_area_offset)


def journal_start(configured: int | None, lease_area_offset: int = 0,
                  mailbox_base: int | None = None) -> int:
    """Where the journal starts: ``configured`` if set, else the first MiB boundary at or
    after both ``lease area offset + JOURNAL_OFFSET`` and the largest end a mailbox starting
    at ``mailbox_base`` can reach (a ``[mailbox] offset`` past the default moves it on)."""
    if configured is not None:
        return configured
    start = lease_area_offset + JOURNAL_OFFSET
    if mailbox_base is not None:
        start = max(start, mailbox_base + MAILBOX_MAX_SIZE)
    return -(-start // AREA_ALIGN) * AREA_ALIGN


def journal_end(start: int) -> int:
    return start + JOURNAL_SIZE


def check_journal_fits(path: str, start: int, storage_size: int) -> None:
    """Raise AreaTooSmall unless the journal ``[start, start + 25 MiB)`` lies within the
    metadata area of ``storage_size`` bytes."""
    end = journal_end(start)
    if end > storage_size:
        raise AreaTooSmall(
            f"the journal needs bytes {start}..{end} of {path}, which has {storage_size}"
            f" (grow the metadata area to at least {-(-end // MIB)} MiB, or set"
            " [mailbox] journal = false)")
