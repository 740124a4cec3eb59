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
"""

from __future__ import annotations

import enum


class ViewAction(enum.Enum):
    OK = "ok"
    REFRESH = "refresh"
    PAUSE = "pause"


def judge_view(view: int, metadata: int, *, extending_to: int | None = None,
               migrating: bool = False, guest_has_run: bool) -> ViewAction:
    """What the view check does for one drive (see the module docstring)."""
    if view >= metadata or migrating:
        return ViewAction.OK
    if extending_to is not None and extending_to >= metadata:
        return ViewAction.OK
    return ViewAction.PAUSE if guest_has_run else ViewAction.REFRESH
