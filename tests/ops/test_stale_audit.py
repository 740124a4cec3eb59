"""Issue 28 item 3: the continuous view audit, with a real guest, a real loop view and a real
Prometheus loading the shipped alert rules (``for:`` shortened, tests/ops/promserver.py).

One lab host (QMP, loop volumes, metrics on 127.0.0.1, a full poll every second) runs a
guest that writes slowly into a 128 MiB volume. While it runs, its loop device is shrunk
behind the service's back to 96 MiB (``LOOP_SET_STATUS64`` with a size limit: the device
reattached at an older size), below the volume's size in the metadata (its file). Then:

- within one full poll the audit finds the view smaller than the metadata, pauses the guest
  and counts it (``autoextend_stale_views_total{when="audit"}``,
  ``autoextend_stale_view_pauses_total``); ``autoextend status`` data names the drive;
- more full polls pass and the guest stays paused (never resumed by autoextend);
- AutoextendStaleView fires on the real Prometheus.
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

import anyio
import pytest

from autoextend.lab.waiting import until
from autoextend.lvm import loopdev

from .auditrig import armed_guest

pytestmark = pytest.mark.slow
MiB = 1 << 20
LOOP_SET_STATUS64, LOOP_GET_STATUS64 = 0x4C04, 0x4C05
SIZELIMIT_AT = 32  # struct loop_info64: lo_device, lo_inode, lo_rdevice, lo_offset, lo_sizelimit


def shrink_view(device: str, size: int) -> None:
    """Set the loop device's size limit while it is in use (as a device reattached at an
    older size would be): its size drops to ``size``, the backing file stays as it is."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = bytearray(232)  # sizeof(struct loop_info64)
        fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
        struct.pack_into("=Q", info, SIZELIMIT_AT, size)
        fcntl.ioctl(fd, LOOP_SET_STATUS64, bytes(info))
    finally:
        os.close(fd)


async def test_a_view_shrunk_under_a_running_guest_pauses_it_for_good(
    lab_tmp_path: Path,
) -> None:
    async with armed_guest(lab_tmp_path, "aud1") as rig:
        host, guest, vm = rig.host, rig.guest, rig.vm
        monitor = host.service.monitor
        await anyio.to_thread.run_sync(shrink_view, guest.device, 96 * MiB)
        assert loopdev.size_of(guest.device) == 96 * MiB
        polls = monitor.polls
        await until(lambda: host.service.tally.stale_view_pauses == 1, 30,
                    "the audit pausing the guest", describe=vm)
        # One full poll is two polls here (0.5 s, full every 1 s); allow one in flight.
        print(f"paused after {monitor.polls - polls} polls")
        assert monitor.polls - polls <= 3
        status = await rig.query_status()
        assert isinstance(status, dict) and status["running"] is False, status
        entry = vm()
        assert "vda" in entry["stale_views"] and "audit" in entry["stale_views"]["vda"]
        registry = host.service.metrics.registry
        assert registry.get_sample_value("autoextend_stale_views_total",
                                         {"when": "audit"}) == 1
        # Several full polls later: still paused, never resumed, counted once.
        await until(lambda: monitor.polls >= polls + 10, 60, "ten more polls")
        status = await rig.query_status()
        assert isinstance(status, dict) and status["running"] is False, status
        assert host.service.tally.resumes == 0
        assert host.service.tally.stale_view_pauses == 1
        firing = await rig.firing("AutoextendStaleView")
        assert firing[0]["labels"]["instance"] == rig.instance
