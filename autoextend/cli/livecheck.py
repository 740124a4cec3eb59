"""``autoextend config check --live``: the outcome of each failure with this host's timeouts.

Gathers the numbers (multipath's queueing, the lease timings, the mailbox deadline,
``[resume]``) and prints :mod:`autoextend.coherence`'s outcomes, one line per failure. A
combination that ends in a guest-visible error is a RISK line, and the exit code is 1.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import click

from autoextend import coherence, multipath
from autoextend.errors import AutoextendError
from autoextend.monitor.policy import DrivePolicy, MiB, watermark
from autoextend.settings import Settings

SYSTEM_CONFIG = Path("/etc/multipath.conf")
COMMAND_TIMEOUT_S = 10.0


class RisksFound(AutoextendError):
    """At least one failure ends in a guest-visible error (exit 1; the lines are on stdout)."""


def read_multipath(path: Path | None) -> multipath.MultipathConfig | None:
    """The given file; else `multipath -t` where multipath is installed; else the system file;
    else None (no multipath: an I/O error reaches QEMU at once)."""
    if path is not None:
        return multipath.parse(_read(path), str(path))
    tool = shutil.which("multipath")
    if tool is not None:
        try:
            done = subprocess.run([tool, "-t"], capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise AutoextendError(
                f"`multipath -t` did not answer in {COMMAND_TIMEOUT_S:g} s") from None
        if done.returncode == 0:
            return multipath.parse(done.stdout, "multipath -t", source_is_builtin=True)
    if SYSTEM_CONFIG.exists():
        return multipath.parse(_read(SYSTEM_CONFIG), str(SYSTEM_CONFIG))
    return None


def _read(path: Path) -> str:
    with path.open("rb") as f:
        data = f.read(multipath.MAX_CONFIG_BYTES + 1)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise multipath.MultipathConfigError(f"{path}: not UTF-8 text") from None


def inputs(s: Settings, mp: multipath.MultipathConfig | None,
           guest_io_timeout_s: float | None) -> coherence.Inputs:
    if mp is None:
        queue_s, queueing = 0.0, "no multipath: an I/O error reaches QEMU at once"
    else:
        worst = mp.worst()
        queue_s = worst.seconds(mp.polling_interval_s)
        queueing = f"{worst.describe(mp.polling_interval_s)}, from {mp.source}"
    return coherence.Inputs(
        io_timeout_s=s.lease.io_timeout_s, watchdog_fire_timeout_s=s.lease.watchdog_fire_timeout_s,
        extender=s.service.extender, request_timeout_s=s.mailbox.request_timeout_s,
        resume_policy=s.resume.policy, kill_after_s=s.resume.kill_after_s,
        resume_backoff_max_s=s.resume.backoff_max_s, queue_s=queue_s, queueing=queueing,
        watermark_bytes=watermark(DrivePolicy(
            s.policy.chunk_mib * MiB, s.policy.utilization_percent, s.policy.cap_factor,
            s.policy.extent_mib * MiB)),
        guest_io_timeout_s=guest_io_timeout_s)


def report(s: Settings, mp: multipath.MultipathConfig | None, guest_io_timeout_s: float | None,
           path_losses: tuple[float, ...], as_json: bool) -> None:
    i = inputs(s, mp, guest_io_timeout_s)
    found = coherence.outcomes(i, path_losses or coherence.default_path_losses(i))
    risks = [o for o in found if o.level == "risk"]
    if as_json:
        click.echo(json.dumps({
            "lease_io_timeout_s": i.io_timeout_s, "watchdog_fire_timeout_s":
            i.watchdog_fire_timeout_s, "multipath_queue_s": None if math.isinf(i.queue_s)
            else i.queue_s, "multipath_queueing": i.queueing,
            "outcomes": [o.__dict__ for o in found]}, indent=2))
    else:
        queued = "forever" if math.isinf(i.queue_s) else f"{i.queue_s:g} s"
        click.echo(f"timeouts: lease T {i.io_timeout_s:g} s, W {i.watchdog_fire_timeout_s:g} s "
                   f"(lease expiry {coherence.lease_expiry_s(i):g} s); multipath queues "
                   f"{queued}: {i.queueing}")
        for o in found:
            mark = {"risk": "RISK", "warning": "warn"}.get(o.level, "ok")
            click.echo(f"  {mark:<4}  {o.failure:<18} {o.outcome}")
    if risks:
        raise RisksFound(f"{len(risks)} failure(s) end in a guest-visible error: "
                         + ", ".join(o.failure for o in risks))
