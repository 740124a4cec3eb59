"""The view check: is this host's view of a volume at least its size in the metadata, and
what to do when it is not (issue 28: check at every appearance, audit continuously).

A *view* is this host's mapping of a volume (its device-mapper table in production, a loop
device in the lab). The *metadata size* is the LV's size in the VG metadata, which every
extend (by any host, through the SPM or locally) raises first. A view smaller than the
metadata size is *stale*: a guest reading through it past the view's end gets zeros with no
error, and its writes there fail.

The rule, as one pure function so that the monitor, the audit and the simulation share it:

- view >= metadata: nothing to do;
- the VM is migrating (either way): nothing here. The migration protocol owns the views
  then (``monitor/migrating.py``: the source never refreshes, the destination refreshes
  before it arms);
- smaller, but only because of an extension this host has in flight to at least the
  metadata size: the extender refreshes when it lands;
- smaller, and the guest has not run yet (it appeared paused in ``prelaunch``, or the check
  runs before the first ``cont``): refresh, then arm. Nothing was read through the stale view;
- smaller, and the guest is paused for ENOSPC on this very drive, its writes having failed
  just past this view's end (``filled``, below): the volume grew for an extension of this
  host's whose refresh never ran here (the service died with it in flight, and the SPM
  served it after). Refresh the view, as that extension's refresh would have, re-arm, and
  resume the guest like any ENOSPC pause autoextend caused (GROWN);
- smaller, and the guest may have run on it: it may already have read zeros. Pause it, count
  it, alert, and never resume it automatically: only the operator can tell what the guest
  did with what it read.

**Why GROWN is safe: what ``filled`` knows, and what it cannot.** The hazard of a stale view
is data that *another* host wrote past this view's end (the guest ran there on a larger
view, then started or arrived here while nothing refreshed this one), which this QEMU's
qcow2 references and reads here as zeros. ``filled`` is two facts about this QEMU process,
from this host's hypervisor: (1) it is paused for ENOSPC on this drive: a write of its ran
past the end of this host's view; (2) its highest written offset on the volume (QEMU's
``wr_highest_offset`` of the protocol node, ``DriveInfo.allocation``; QEMU counts failed
writes in it too: seen here, 320 KiB past a 256 MiB view after such a pause) lies past this
view's end by at most :data:`FILL_SLACK`.

qcow2 allocates a new cluster at the lowest free host offset, which, but for clusters freed
inside the image, is the end of the image as this QEMU knows it. A guest whose own writes
filled this view allocates its next clusters at the view's end: the writes that fail start
there, and (2) holds with the writes the guest had in flight when QEMU stopped it (one
request, a few at most; :data:`FILL_SLACK` covers eight requests of 1 MiB). In the hazard,
the other host's data already lies past this view's end when this QEMU opens the image, so
its allocations start past that data: its failing writes, and so its highest written
offset, end past the other host's data, unless a write that failed rewrote one of the
other host's clusters (it fails wherever that cluster lies past the view). So (2) tells the
two apart except when the other host wrote less than :data:`FILL_SLACK` past this view's
end, when a write that failed rewrote a cluster the other host placed within
:data:`FILL_SLACK` of it, or when the image has free clusters past it that this QEMU
allocated first: those guests would be resumed on a view refreshed to the metadata size
(from then on they read what the other host wrote; what they read before, they read). They
all need a guest started on a stale view while autoextend was down and without the
``volume prepare`` hook (``docs/stale-views.md``), the start that hook exists to refuse.
Everything else stays held: a guest that is running (this includes a guest of this host's
own late extension that had not reached the view's end yet at the restart: nothing this
host can read tells it from the hazard), paused for another reason or for ENOSPC on
another drive, or whose highest write lies within this view or further past its end (a
false hold of a guest with many writes in flight is on the safe side). ``filled`` is
computed at a VM's appearance only, never for a VM migrating in (the migration protocol's,
``monitor/views.py``); the same two facts decide again at a later appearance (a hold is
kept in memory only).

And the other way (issue 27, item 1: the backstop of the in-use protocol, ``spm/inusegate.py``):

- **larger** (SHRUNK): the volume shrank under this host (a reduce or a remove that the
  in-use records did not stop: an open that bypassed ``volume prepare``). The extents past
  the new end may already belong to another LV: a write there corrupts it. Pause the guest
  at once, whatever it did before, extension in flight or not (no extension makes the
  metadata smaller; ``judge_view`` says SHRUNK even for a migrating VM, though the audit
  looks only at VMs that are not migrating), count it, alert, never resume it automatically,
  and never refresh the view larger again. A guest that has not run is paused too (its
  process already holds the old length, and a refresh would not change that).
"""

from __future__ import annotations

import enum

#: How far past this host's view a guest paused for ENOSPC at that view's end may have
#: written (its failed writes count in QEMU's highest written offset): the requests it had
#: in flight when QEMU stopped it (eight of 1 MiB, a Linux guest's largest by default).
FILL_SLACK = 8 << 20


class ViewAction(enum.Enum):
    OK = "ok"
    REFRESH = "refresh"
    PAUSE = "pause"
    SHRUNK = "shrunk"
    GROWN = "grown"


def filled_view(view: int, allocation: int, *, paused_enospc_here: bool) -> bool:
    """The guest paused for ENOSPC on this drive, its writes having failed just past the end
    of this host's view (``allocation``: its highest written offset on the volume, failed
    writes included). See the module docstring for what this proves and what it cannot."""
    return paused_enospc_here and view < allocation <= view + FILL_SLACK


def judge_view(view: int, metadata: int, *, extending_to: int | None = None,
               migrating: bool = False, guest_has_run: bool,
               filled: bool = False) -> ViewAction:
    """What the view check does for one drive (see the module docstring). ``filled``:
    :func:`filled_view` of the drive, for a guest that has run (only the appearance check
    passes it)."""
    if view > metadata:
        return ViewAction.SHRUNK
    if view == metadata or migrating:
        return ViewAction.OK
    if extending_to is not None and extending_to >= metadata:
        return ViewAction.OK
    if not guest_has_run:
        return ViewAction.REFRESH
    return ViewAction.GROWN if filled else ViewAction.PAUSE
