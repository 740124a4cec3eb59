"""Issue 27 item 1, the host's backstop: a volume that shrinks under a running guest (its
view LARGER than its size in the metadata) pauses the guest for good, is counted, and
pages, with a real guest, a real loop view and a real Prometheus loading the shipped rules.

One lab host (QMP, loop volumes, a full poll every second) runs a guest that writes slowly
into a 128 MiB volume. Its backing file (the loop stand-in's metadata) is cut to 96 MiB
behind the service's back, as a reduce by another host would; the loop device keeps its
128 MiB (the view). Then:

- within a few polls the audit finds the view larger than the metadata and pauses the guest
  (``autoextend_shrunk_view_pauses_total``, not counted as a stale view); the status data
  names the drive;
- more polls pass: the guest stays paused, and the backing file is still 96 MiB (nothing
  was written past the new end after the pause: a loop write there would grow the file);
- AutoextendShrunkView fires on the real Prometheus.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from autoextend.lab.waiting import until
from autoextend.lvm import loopdev

from .auditrig import armed_guest

pytestmark = pytest.mark.slow
MiB = 1 << 20


async def test_a_volume_shrunk_under_a_running_guest_pauses_it_for_good(
    lab_tmp_path: Path,
) -> None:
    async with armed_guest(lab_tmp_path, "shr1") as rig:
        host, guest, vm = rig.host, rig.guest, rig.vm
        monitor = host.service.monitor
        backing = host.volumes.file_path(guest.volume)
        await anyio.to_thread.run_sync(os.truncate, backing, 96 * MiB)
        assert loopdev.size_of(guest.device) == 128 * MiB  # the view did not follow
        polls = monitor.polls
        registry = host.service.metrics.registry

        def shrunk_pauses() -> float:
            return registry.get_sample_value("autoextend_shrunk_view_pauses_total") or 0

        await until(lambda: shrunk_pauses() == 1, 60, "the audit pausing the guest",
                    describe=vm)
        status = await rig.query_status()
        assert isinstance(status, dict) and status["running"] is False, status
        entry = vm()
        assert "vda" in entry["stale_views"] and "shrank" in entry["stale_views"]["vda"]
        assert registry.get_sample_value("autoextend_stale_views_total",
                                         {"when": "audit"}) == 0
        # Ten polls later: still paused, never resumed, nothing written past the end.
        await until(lambda: monitor.polls >= polls + 10, 60, "ten more polls")
        status = await rig.query_status()
        assert isinstance(status, dict) and status["running"] is False, status
        assert host.service.tally.resumes == 0 and shrunk_pauses() == 1
        assert (await anyio.Path(backing).stat()).st_size == 96 * MiB
        firing = await rig.firing("AutoextendShrunkView")
        assert firing[0]["labels"]["instance"] == rig.instance
