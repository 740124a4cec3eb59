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
- smaller, and the guest may have run on it: it may already have read zeros. Pause it, count
  it, alert, and never resume it automatically: only the operator can tell what the guest
  did with what it read.

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


class ViewAction(enum.Enum):
    OK = "ok"
    REFRESH = "refresh"
    PAUSE = "pause"
    SHRUNK = "shrunk"


def judge_view(view: int, metadata: int, *, extending_to: int | None = None,
               migrating: bool = False, guest_has_run: bool) -> ViewAction:
    """What the view check does for one drive (see the module docstring)."""
    if view > metadata:
        return ViewAction.SHRUNK
    if view == metadata or migrating:
        return ViewAction.OK
    if extending_to is not None and extending_to >= metadata:
        return ViewAction.OK
    return ViewAction.PAUSE if guest_has_run else ViewAction.REFRESH
