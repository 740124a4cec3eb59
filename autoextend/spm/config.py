"""The ``[mailbox]`` section: the storage mailbox between hosts and the SPM.

Every host and the SPM must agree on ``offset``, ``max_hosts`` and the sector size: they fix
the layout on the shared metadata area (see ``autoextend/spm/README.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autoextend.confbase import Section

MiB = 1 << 20
TiB = 1 << 40


class MailboxSettings(Section):
    # The metadata area (file or block device); empty means the lease area's path.
    path: str = ""
    # Byte offset of the mailbox region on the metadata area (multiple of 4096).
    # Unset: right after the lease area ([lease] offset + lease.layout.MAILBOX_OFFSET).
    offset: int | None = Field(None, ge=0)
    # 0 = the device's logical sector size (or the lease section's), else forced.
    sector_size: Literal[0, 512, 4096] = 0
    # Host ids 1..max_hosts have a mailbox. 2000 = sanlock's HOSTS_MAX; it costs 32 MiB of
    # metadata area and a 4 KiB doorbell read per SPM poll.
    max_hosts: int = Field(2000, ge=1, le=2000)
    # SPM: how often to read the doorbell area (one 4 KiB read). 25 ms keeps the mailbox
    # round trip far below vdsm's 0.5 s while idle I/O stays at ~160 KiB/s (vdsm: 518 KB/s).
    poll_interval_s: float = Field(0.025, gt=0.0, le=60.0)
    # SPM: every mailbox is read once per this period anyway (safety net for a doorbell
    # change that was lost); spread evenly, so it adds max_hosts*8 KiB/period of reads.
    full_scan_interval_s: float = Field(300.0, gt=0.0, le=86400.0)
    # SPM: lvextend commands running at once across VGs (vdsm: 10); one at a time per VG.
    max_concurrent_extends: int = Field(10, ge=1, le=100)
    # SPM: a request for more than this is rejected (qcow2 images stay far below it).
    max_request_bytes: int = Field(64 * TiB, ge=MiB, le=(1 << 63) - 1)
    # Host: how often to read its reply sectors while it waits for a reply (no I/O when idle).
    # It slows down as the wait gets longer (a quarter of the time waited, up to the max), so a
    # host waiting through an SPM failover reads a sector a second, not two hundred.
    reply_poll_interval_s: float = Field(0.005, gt=0.0, le=60.0)
    reply_poll_max_s: float = Field(1.0, gt=0.0, le=60.0)
    # Host: ring the doorbell again if no reply came for this long, doubling up to the max
    # (an SPM that just took over, or a lost doorbell update, picks the request up).
    ring_retry_initial_s: float = Field(1.0, gt=0.0, le=600.0)
    ring_retry_max_s: float = Field(10.0, gt=0.0, le=3600.0)
    # Host: give up waiting for a reply after this long. Longer than an SPM failover
    # (lease expiry 80 s + acquisition) so a failover does not fail the request.
    request_timeout_s: float = Field(180.0, gt=0.0, le=86400.0)


def mailbox_base(settings: MailboxSettings, lease_area_offset: int = 0) -> int:
    """Where the mailbox region starts: ``offset`` if set, else after the lease area."""
    if settings.offset is not None:
        return settings.offset
    from autoextend.lease.layout import mailbox_offset

    return mailbox_offset(lease_area_offset)
