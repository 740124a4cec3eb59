"""The ``[mailbox]`` section: the storage mailbox between hosts and the SPM.

Every host and the SPM must agree on ``offset``, ``max_hosts`` and the sector size (the
lease area's: ``[lease] sector_size``): they fix the layout on the shared metadata area (see
``autoextend/spm/README.md``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autoextend.confbase import Section
from autoextend.metadata_area import journal_start, mailbox_start

MiB = 1 << 20
TiB = 1 << 40


class MailboxSettings(Section):
    # The metadata area (file or block device); empty means the lease area's path.
    path: str = ""
    # Byte offset of the mailbox region on the metadata area (multiple of 4096).
    # Unset: right after the lease area ([lease] offset + metadata_area.MAILBOX_OFFSET).
    offset: int | None = Field(None, ge=0)
    # Host ids 1..max_hosts have a mailbox (16 KiB each, a 4 KiB in-use record, a one-sector
    # summary record). 250 =
    # the [lease] max_hosts default (host ids cannot be higher); up to 2000 (sanlock's
    # HOSTS_MAX). The SPM's idle reads and its cold-path latency grow with it (see
    # README.md, I/O budget).
    max_hosts: int = Field(250, ge=1, le=2000)
    # SPM: how often it reads the ring sectors of *active* hosts (those that sent a request
    # within hot_window_s). 25 ms keeps the round trip of an active host > 10x below vdsm's
    # 0.5 s; it costs one sector per active host per poll, nothing when no host is active.
    poll_interval_s: float = Field(0.025, gt=0.0, le=60.0)
    # SPM: a host stays on that fast path this long after its last new request. A VM that
    # needs extending quickly writes fast and so asks again well within a minute; a slower
    # writer has minutes of headroom and is served by the sweep below.
    hot_window_s: float = Field(60.0, ge=0.0, le=3600.0)
    # SPM: at most this many bytes/s of fast-path reads (the fast poll slows down when more
    # hosts are active than fit: 1 MiB/s = 51 hosts with 512 B sectors at 25 ms).
    hot_read_bytes_per_s: int = Field(MiB, ge=4096)
    # SPM: every host's ring sector (but those of the live sweep below) is read every
    # max(poll_interval_s, max_hosts * sector_size / this) seconds: the safety net, and the
    # latency bound of a host the lease does not see alive. 256 KiB/s is half of vdsm's idle
    # reads; with 250 hosts and 512 B sectors it sweeps every 0.49 s.
    ring_sweep_bytes_per_s: int = Field(256 * 1024, ge=4096)
    # SPM: the ring sectors of the hosts the lease sees alive (not FREE/DEAD) are read every
    # live_poll_interval_s, slowed so this costs at most this many bytes/s (and never read
    # less often than by the sweep above). 240 KiB/s: 21 live hosts at 45 ms (512 B
    # sectors), 50 live at 0.1 s; with the sweep and the full scan the SPM's idle reads stay
    # at or below vdsm's 518 KB/s whatever the number of live hosts (spm/README.md, "Cadence,
    # reads and CPU": sweep + live sweep + full scan <= 518 KB/s).
    live_sweep_bytes_per_s: int = Field(240 * 1024, ge=4096)
    # SPM: the live sweep's fastest cadence: a quiet live host's first request is noticed
    # within this. On O_DIRECT storage a reader thread of its own does it and wakes the
    # server only when a ring sector changed (about 0.14 ms of CPU per read here), so 45 ms
    # keeps an idle SPM under 0.4 % of a core and a cold request under 60 ms at p99
    # (spm/README.md, "Cadence, reads and CPU", has the formula).
    live_poll_interval_s: float = Field(0.045, gt=0.0, le=60.0)
    # SPM: every request box is read once per this period anyway (safety net against a ring
    # sector corrupted on disk); spread evenly, so it adds max_hosts*8 KiB/period of reads.
    full_scan_interval_s: float = Field(300.0, gt=0.0, le=86400.0)
    # SPM: lvextend commands running at once across VGs (vdsm: 10); one at a time per VG.
    max_concurrent_extends: int = Field(10, ge=1, le=100)
    # SPM: a request for more than this is rejected (qcow2 images stay far below it).
    max_request_bytes: int = Field(64 * TiB, ge=MiB, le=(1 << 63) - 1)
    # Host: how often to read its reply sectors while it waits for a reply (no I/O when idle).
    # It slows down as the wait gets longer (a tenth of the time waited, up to the max), so a
    # host waiting through an SPM failover reads a sector a second, not two hundred.
    reply_poll_interval_s: float = Field(0.005, gt=0.0, le=60.0)
    reply_poll_max_s: float = Field(1.0, gt=0.0, le=60.0)
    # Host: ring again if no reply came for this long, doubling up to the max. Rings are never
    # lost (each host writes only its own ring sector) and a new SPM reads every box at start,
    # so this is only a cheap extra safety net.
    ring_retry_initial_s: float = Field(1.0, gt=0.0, le=600.0)
    ring_retry_max_s: float = Field(10.0, gt=0.0, le=3600.0)
    # Host: give up waiting for a reply after this long. Longer than an SPM failover
    # (lease expiry 80 s + acquisition) so a failover does not fail the request.
    request_timeout_s: float = Field(180.0, gt=0.0, le=86400.0)
    # SPM: append a record of every metadata change it makes (extend, reduce: term, host,
    # volume, old and new size, request id, time) to the journal on the metadata area, which
    # `autoextend journal dump` reads from any host. Needs 25 MiB of the area from
    # journal_offset on. "auto": on when the metadata area is that large (else off; `spm
    # status` shows no journal); true: start-up and `lease init` refuse a smaller area.
    journal: bool | Literal["auto"] = "auto"
    # Byte offset of the journal (multiple of 1 MiB). Unset: [lease] offset + 52 MiB, after
    # the largest mailbox (2000 hosts), so no mailbox record moves (autoextend/metadata_area.py).
    journal_offset: int | None = Field(None, ge=0)


def mailbox_base(settings: MailboxSettings, lease_area_offset: int = 0) -> int:
    """Where the mailbox region starts: ``offset`` if set, else after the lease area."""
    return mailbox_start(settings.offset, lease_area_offset)


def journal_base(settings: MailboxSettings, lease_area_offset: int = 0) -> int:
    """Where the journal starts: ``journal_offset`` if set, else after the largest mailbox."""
    return journal_start(settings.journal_offset, lease_area_offset,
                         mailbox_base(settings, lease_area_offset))
