"""Backing store full: an ENOSPC that the volume's own size cannot explain.

Linux reports a thin array LUN that ran out of space as ENOSPC too (SCSI sense 27/07), and
so does a loop device whose backing file sits on a full file system. Extending the volume
then adds space the storage cannot back: autoextend would extend and resume in a loop, one
chunk at a time, up to the cap. This module says which ENOSPC pauses are the volume's own
(extend) and which are not (never extend; resume under the ``[resume]`` backoff). Pure: the
numbers come in as arguments.

Derivation:

* QEMU checks a node's write threshold *before* each write (the check is part of preparing
  the write request, so it fires for a write that then fails). Our threshold sits at
  ``physical - watermark``. A write that fails because it runs past the end of the volume
  reaches beyond ``physical``, so it crosses the threshold first: QEMU sends the event and
  disarms the threshold (it reads 0 afterwards), and the drive leaves SET.
* So: if the drive is SET on its current size, the hypervisor still reports our threshold
  armed (a fresh read, not our memory of it: an event may be lost), and the allocation is
  below it (more than the watermark free), then no write reached past ``physical`` *since
  that threshold was armed*.
* "Room" alone is not enough. An ENOSPC from *before* an extension can be handled after the
  extension landed and the threshold was re-armed (the guest wrote two chunks past the end:
  the event waits in the VM's inbox while the extension runs). It then looks exactly like
  "ENOSPC with room", and it is the volume's own: the space is there now, and a resume is
  all it needs. The time the event was *received* does not settle it either: the event can
  be read after the extension landed although QEMU sent it before.
* What settles it is an ENOSPC that *happened* after the threshold was armed on this size.
  A pause is seen by a fresh run-state query; a query answered after our own ``cont``
  (``resume`` returned) that finds the VM paused again means a new pause, after the ``cont``.
  So autoextend records, at each resume it sends, each SET drive's ``(physical, threshold)``
  (``VmMachine.resumed_on``). An ENOSPC pause on a drive with room whose ``(physical,
  threshold)`` are still those recorded at our last resume happened while that threshold
  was armed on that size, and no write crossed it: the storage under the volume refused a
  write inside the volume. That is **backing store full**.

Where the numbers come from (stop 42):

* Only "backing store full" needs a fresh read. An ENOSPC named on a SET drive that
  autoextend has not resumed since its threshold was armed on this size (``resumed_on``
  differs) is one from before, whatever a read would say: the hypervisor sends a crossing
  before the error of the write that crossed and before its pause (QEMU checks the
  threshold as it prepares the write; libvirt passes QEMU's events on in order), and the
  VM's task handles them in order, so no write crossed the threshold armed on this size
  before it failed. It failed on the old size, and the space is there now. The pause
  message that follows (QMP's STOP, whose run state the backend read) resumes the VM with
  no drive read; if none comes within ``vmtask.PAUSE_FOLLOWS_S``, a look does. A lost
  crossing is no risk: the QMP listener turns an overflow into a resync before any later
  event, and a reconnect resyncs. An ENOSPC on a drive already resumed on this size takes
  the fresh look, as above.
* A pause message handled between our ``cont`` and its RESUME is from before the ``cont``
  (the hypervisor sends the RESUME after every event from before it): the run state it
  carries is stale, and only a fresh look decides (``VmMachine.cont_unconfirmed``). Taken
  as new, it made the ENOSPC before the ``cont`` look like one after it, on the size just
  resumed on: "backing store full", a false warning and alert, and a backoff step before
  the next resume (the local bench found it at 4 MiB chunks).

The rule, as :func:`classify`:

* ``VOLUME_FULL`` -- the drive has no room by the rule above (not armed, the threshold fired,
  or less than the watermark free): extend, as always.
* ``ROOM`` -- room, but not (yet) proven to have happened on this size: do not extend (the
  space is there); the VM is resumed under the ``[resume]`` backoff. A stale event ends here
  and the guest runs on; a full array pauses the guest again at once, and the next look
  finds:
* ``BACKING_STORE_FULL`` -- room, on the size and threshold recorded at our last resume.

A backing-store-full drive is never extended; one warning names the VG and the drive, and
the VM keeps being resumed under the backoff (which is not reset while the pause repeats)
until the storage has space again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class EnospcKind(enum.Enum):
    VOLUME_FULL = "volume-full"
    ROOM = "room"
    BACKING_STORE_FULL = "backing-store-full"


@dataclass(frozen=True)
class EnospcSample:
    """One drive's numbers at a fresh look at a VM paused for ENOSPC on it.

    ``armed``: the threshold autoextend armed (0 unless the drive is SET); ``seen``: the
    threshold the hypervisor reports now (0 once fired); ``resumed_on``: the drive's
    ``(physical, armed)`` when autoextend last resumed the VM from an ENOSPC pause (None:
    not resumed since the pause began, or the drive was not armed then).
    """

    armed: int
    seen: int
    allocation: int
    physical: int
    watermark: int
    resumed_on: tuple[int, int] | None = None


def has_room(s: EnospcSample) -> bool:
    """Our threshold is armed (by us and in the hypervisor) and not reached, and more than
    the watermark is free: no write ran past the end since the threshold was armed."""
    return (s.armed > 0 and s.seen == s.armed and s.allocation < s.armed
            and s.physical - s.allocation > s.watermark)


def classify(s: EnospcSample) -> EnospcKind:
    """What an ENOSPC on this drive is (see the module's derivation)."""
    if not has_room(s):
        return EnospcKind.VOLUME_FULL
    if s.resumed_on == (s.physical, s.armed):
        return EnospcKind.BACKING_STORE_FULL
    return EnospcKind.ROOM
