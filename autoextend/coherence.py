"""Timeout coherence on one host: what each failure does with the timeouts as configured.

``autoextend config check --live`` reads multipath's queueing (``autoextend/multipath.py``),
the lease timings (T = ``lease.io_timeout_s``, W = ``lease.watchdog_fire_timeout_s``), the
mailbox deadline and ``[resume]``, and states, for each failure, its outcome: the I/O is
queued, the VM pauses on EIO and is resumed, the host is fenced, or the guest sees an error.
Pure functions of those numbers; the caller gathers them.

The rules (q = multipath queueing, E = 8 T the host lease expiry, g = the guests' own I/O
timeout when the operator gives one):

- **Path loss of d seconds.** I/O queues for min(d, q). If d > q, QEMU gets EIO and pauses
  the VM (``werror=stop``); ``[resume]`` then says what happens. The lease's own I/O fails
  after T whether queued or not, so this host's id lease is lost once the outage outlasts
  E - 2T (the last renewal was up to 2T before it). If the guests time their own I/O out
  (virtio-scsi and SATA under Linux: 30 s; Windows disks: 60 s) and the I/O queues longer
  than that, the guest gets I/O errors: **risk**. ``no_path_retry queue`` (q = infinity) is
  a risk on its own: the VM never pauses, it hangs for the whole outage, and a QEMU blocked
  in the kernel cannot be killed by the ``kill`` policy. vdsm's rule q = E (``no_path_retry
  = 8 T / polling_interval``) makes a VM pause at about the time its host would be fenced;
  q > E fences the host while its VMs still queue: a **warning**.
- **SPM crash.** Extensions wait for the failover, up to 8T + W + 2T; a guest that writes
  its whole watermark before then pauses on ENOSPC and is resumed after the next SPM serves.
  A mailbox deadline shorter than the failover fails extensions that would have been served:
  **risk** (``autoextend/timeouts.py``).
- **VG full.** The extension is refused; the guest pauses on ENOSPC at its volume's end and
  autoextend resumes it once the VG has room (``vgextend``, or a grown PV).
- **Array full** (a thin LUN out of space). The array answers ENOSPC; QEMU pauses the VM.
  autoextend cannot yet tell this from a full volume, so it extends the volume, which the
  array cannot back: the VM pauses again until the array has room. **Warning**, not a risk:
  no data reaches the guest as an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoextend.timeouts import HOST_DEAD_IO_TIMEOUTS, failover_s

RENEWAL_IO_TIMEOUTS = 2   # a host renews its id lease every 2 T


@dataclass(frozen=True)
class Inputs:
    io_timeout_s: float                  # T
    watchdog_fire_timeout_s: float       # W
    extender: str                        # "local" or "mailbox"
    request_timeout_s: float
    resume_policy: str                   # auto / leave / kill
    kill_after_s: float
    resume_backoff_max_s: float
    queue_s: float                       # multipath queueing (math.inf: forever)
    queueing: str                        # where it comes from, for the reader
    watermark_bytes: int                 # the default drive's free space at the threshold
    guest_io_timeout_s: float | None = None


@dataclass(frozen=True)
class Outcome:
    failure: str
    outcome: str
    level: str    # "ok", "warning" or "risk"


def lease_expiry_s(i: Inputs) -> float:
    return HOST_DEAD_IO_TIMEOUTS * i.io_timeout_s


def _seconds(value: float) -> str:
    return "forever" if math.isinf(value) else f"{value:g} s"


def path_loss(i: Inputs, duration_s: float) -> Outcome:
    """What a loss of every path for ``duration_s`` seconds does (see the module docstring)."""
    queued = min(duration_s, i.queue_s)
    said = [f"I/O queued {_seconds(queued)}"]
    level = "ok"
    if i.guest_io_timeout_s is not None and queued > i.guest_io_timeout_s:
        said.append(f"the guests' own {i.guest_io_timeout_s:g} s I/O timeout fires first: "
                    "I/O errors inside the guests")
        level = "risk"
    if duration_s <= i.queue_s:
        said.append("guests stall, then carry on")
    else:
        said.append(f"then EIO: QEMU pauses the VMs; {_resume(i, duration_s - i.queue_s)}")
    fenced_after = lease_expiry_s(i) - RENEWAL_IO_TIMEOUTS * i.io_timeout_s
    if i.extender == "mailbox" and duration_s > fenced_after:
        handover = failover_s(i.io_timeout_s, i.watchdog_fire_timeout_s)
        said.append(f"this host's lease can lapse after {fenced_after:g} s (fenced; an SPM "
                    f"here hands over within {handover:g} s)")
    return Outcome(f"path loss {duration_s:g} s", "; ".join(said), level)


def queueing(i: Inputs) -> Outcome:
    """multipath's queueing against the lease expiry (vdsm: no_path_retry = 8 T / interval)."""
    expiry = lease_expiry_s(i)
    if math.isinf(i.queue_s):
        return Outcome("queueing", f"{i.queueing}: a path loss never pauses a VM, it hangs for "
                       "the whole outage; it cannot be failed over, and `kill` cannot stop a "
                       "QEMU blocked in the kernel", "risk")
    if i.extender == "mailbox" and i.queue_s > expiry:
        return Outcome("queueing", f"queues {i.queue_s:g} s, past the {expiry:g} s lease expiry:"
                       " this host is fenced before its VMs pause (vdsm sets no_path_retry ="
                       " 8 T / polling_interval)", "warning")
    return Outcome("queueing", f"queues {i.queue_s:g} s, within the {expiry:g} s lease expiry",
                   "ok")


def _resume(i: Inputs, paused_s: float) -> str:
    if i.resume_policy == "leave":
        return "[resume] leave: they stay paused for the operator"
    if i.resume_policy == "kill" and paused_s > i.kill_after_s:
        return f"[resume] kill: destroyed after {i.kill_after_s:g} s paused (for another host)"
    return (f"[resume] resumes them within {i.resume_backoff_max_s:g} s of the storage "
            "answering again")


def spm_crash(i: Inputs) -> Outcome:
    if i.extender != "mailbox":
        return Outcome("SPM crash", "local extender: no SPM, nothing waits", "ok")
    failover = failover_s(i.io_timeout_s, i.watchdog_fire_timeout_s)
    rate = i.watermark_bytes / failover / (1 << 20)
    said = (f"extensions wait up to {failover:g} s (8T + W + 2T); guests writing over "
            f"{rate:.1f} MiB/s pause on ENOSPC until the new SPM serves, then resume")
    if i.request_timeout_s < failover:
        return Outcome("SPM crash", said + f"; but mailbox.request_timeout_s "
                       f"{i.request_timeout_s:g} s gives up before that", "risk")
    return Outcome("SPM crash", said, "ok")


def vg_full() -> Outcome:
    return Outcome("VG full", "extensions are refused; guests pause on ENOSPC at their "
                   "volume's end and are resumed once the VG has room", "ok")


def array_full() -> Outcome:
    return Outcome("array full", "the thin LUN answers ENOSPC and QEMU pauses the VM; "
                   "autoextend cannot yet tell it from a full volume and extends it "
                   "(space the array cannot back): it pauses again until the array has room",
                   "warning")


def outcomes(i: Inputs, path_losses_s: tuple[float, ...]) -> list[Outcome]:
    """The queueing rule, then every failure's outcome (path losses in the order given)."""
    return [queueing(i), *(path_loss(i, d) for d in path_losses_s), spm_crash(i), vg_full(),
            array_full()]


def default_path_losses(i: Inputs) -> tuple[float, ...]:
    """A blip, one just past the lease expiry, and a long outage (10 min)."""
    return (10.0, lease_expiry_s(i) + RENEWAL_IO_TIMEOUTS * i.io_timeout_s, 600.0)
