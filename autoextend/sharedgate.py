"""Local mode beside a pool: the other hosts' in-use records before a reduce or a remove
(issue 27, item 1).

``[service] extender = "local"`` makes this host the writer of its VGs by configuration
(``LocalAuthority``). What it may shrink then depends on what it can see of other hosts:

* **No shared area** (``[lease] path`` empty): local mode is the single-host mode by
  definition. Nothing on storage says which other host might use a volume, and no such host
  is supported: the operator's configuration states that no other host runs guests on the
  pool's VGs. A reduce or remove is refused only by this host's own checks (a VM here uses
  the volume, a process here has it open). The README says so ("One writer for the pool").
* **A shared area** (``[lease] path`` set, e.g. a host moved out of mailbox mode, or one
  that runs beside mailbox-mode hosts during a migration of the pool): before a reduce or
  remove that would change the volume, this host reads the area, read-only, like
  ``pool status`` (``poolview.read_pool``: the lease's host records, watched for one
  renewal interval, and what the hosts seen live say of the others), takes each host's
  state from that reading (``poolreport.combine``: live, fail, silent, unknown, bad, dead
  or free), and judges the volume with **the SPM's own rule and code**: the in-use records
  are read and decoded by ``spm/inusegate.py``'s :class:`InUseGate` (``look``, then
  ``settle``: wait until every record moved by 2 publishes), and :func:`spm.inuse.judge`
  says no, naming the host, when a host that is not known dead or free lists the volume,
  or its record is missing, unreadable, of another generation, or stale. A dry run makes
  one look without the freshness rule (like the SPM's REDUCE_CHECK). An area that cannot
  be read refuses (nothing proves that no host uses the volume).

**Argument.** A host B holding volume v from before this host's first look and still
holding it at the collection of the record read in the second look is listed there (the
same sequence argument as ``inusegate.py``: seq moved by 2 means collected after the first
look): refused. A host this reading could not judge (silent, unknown, failing, bad record)
is not dead, so its record must be fresh and not list v, or the op is refused. "Dead" is
the pool status rule: watched silent for 8T + W by this command, or said dead, for its
current generation, by a host seen live (its lease's ``LeaseEngine`` rule): its watchdog
fired, so it runs no guest.

**What is not covered, and why that is accepted.** This host is not the SPM: it does not
own the intent record (one writer per sector), so it cannot write an intent, and a host
that *opens* v after its record's collection in the second look, while this reduce runs,
is not stopped by the claim protocol. The backstop is that host's view check
(``monitor/viewcheck.py``: a view larger than the metadata pauses the guest and never
writes past the new end). Also, a local-mode host beside running mailbox-mode hosts is a
second metadata writer: the SPM counts its writes as foreign (``lvm/foreign.py``). Both
are reasons the supported way to share a pool is mailbox mode on every host; this gate
makes the unsupported way refuse the one loss that cannot be undone (a volume shrunk or
removed under a guest elsewhere).

Cost: one reading of the area per reduce or remove that would change a volume (about one
renewal interval, 2T, plus two publish periods for the settle); no reads otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from autoextend import logs, poolreport, poolview
from autoextend.clock import Clock
from autoextend.config import Settings
from autoextend.directio import open_storage
from autoextend.errors import AutoextendError
from autoextend.spm import inuse
from autoextend.spm.config import mailbox_base
from autoextend.spm.inusegate import InUseGate
from autoextend.spm.layout import MailboxLayout

log = logs.get_logger("capacity")

NOTE = " (read from the pool's shared area: this host runs in local mode)"


def host_states(report: Mapping[str, Any]) -> dict[int, tuple[str, int]]:
    """``{host: (state, generation)}`` of a ``pool status`` report (``poolreport.combine``),
    as :func:`spm.inuse.judge` takes them: "free" and "dead" are skipped there, every other
    state (live, fail, silent, unknown, bad) is judged by its record (pure)."""
    return {int(h["host_id"]): (str(h["state"]), int(h.get("generation") or 0))
            for h in report.get("hosts", ())}


class SharedAreaGate:
    """Local mode's look at the other hosts of the pool (see the module docs)."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock

    @property
    def configured(self) -> bool:
        return bool(self.settings.lease.path)

    async def refusal(self, name: str, *, dry_run: bool = False) -> str | None:
        """Why ``name`` (``vg/lv``) must not be reduced or removed, or None; None at once
        when no shared area is configured (single-host mode)."""
        if not self.configured:
            return None
        settings = self.settings
        lease = settings.lease
        try:
            reading = await poolview.read_pool(settings, self.clock, None)
            states = host_states(poolreport.combine(reading, settings.capacity))
            storage = await open_storage(lease.path, lease.sector_size, lease.io_timeout_s)
        except (AutoextendError, OSError) as exc:
            return (f"cannot read the pool's shared area ({exc}); nothing proves that no"
                    " other host uses the volume" + NOTE)
        try:
            layout = MailboxLayout(mailbox_base(settings.mailbox, lease.offset),
                                   storage.sector_size, settings.mailbox.max_hosts)
            gate = InUseGate(storage, layout, lambda: states, self.clock)
            states = gate.states()
            first = None
            if not dry_run:
                first = await gate.look(states)
                await gate.settle(first)
            why = inuse.judge(name, await gate.look(states), states, first)
        except AutoextendError as exc:
            why = f"reading the hosts' in-use records failed ({exc})"
        finally:
            with anyio.CancelScope(shield=True):
                await storage.close()
        log.info("shared area judged", volume=name, hosts=len(states),
                 refused=why is not None)
        return None if why is None else why + NOTE
