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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.singlehost import lab_host
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev

from .promserver import Prometheus, free_port, prometheus

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


async def prom_until(prom: Prometheus, cond: Callable[[Prometheus], Any], timeout: float,  # noqa: ASYNC109
                     what: str) -> Any:
    with anyio.move_on_after(timeout):
        while True:
            found = await anyio.to_thread.run_sync(cond, prom)
            if found:
                return found
            await anyio.sleep(0.5)  # poll with a deadline (each look is a Prometheus query)
    raise AssertionError(f"{what}: not within {timeout} s; alerts: {prom.alerts()}\n{prom.log()}")


async def test_a_view_shrunk_under_a_running_guest_pauses_it_for_good(
    lab_tmp_path: Path,
) -> None:
    port = free_port()
    async with lab_host(workdir=lab_tmp_path / "host", poll_interval_s=0.5, metrics_port=port,
                        extra={"policy": {"full_poll_interval_s": 1.0}}) as host:
        with prometheus(lab_tmp_path / "prometheus", [f"127.0.0.1:{port}"]) as prom:
            await prom_until(prom, lambda pr: pr.query("up == 1"), 60, "the host scraped")
            # 48 MiB at 256 KiB/s: the guest writes for minutes, below 96 MiB all along.
            guest = await host.start_guest("aud1", GuestJob(mib=48, rate_kib_s=256),
                                           start_mib=128, virtual_mib=512)
            monitor = host.service.monitor

            def vm() -> dict[str, Any]:
                return next((v for v in monitor.snapshot() if v["vm"] == "aud1"), {})

            await guest.vm.wait_for_start(timeout=120)
            await until(lambda: (vm().get("drives") or [{}])[0].get("state") == "set", 60,
                        "the drive armed", describe=vm)
            await anyio.to_thread.run_sync(shrink_view, guest.device, 96 * MiB)
            assert loopdev.size_of(guest.device) == 96 * MiB
            polls = monitor.polls
            await until(lambda: host.service.tally.stale_view_pauses == 1, 30,
                        "the audit pausing the guest", describe=vm)
            # One full poll is two polls here (0.5 s, full every 1 s); allow one in flight.
            print(f"paused after {monitor.polls - polls} polls")
            assert monitor.polls - polls <= 3
            async with guest.vm.qmp("test") as client:
                status = await client.execute("query-status")
            assert isinstance(status, dict) and status["running"] is False, status
            entry = vm()
            assert "vda" in entry["stale_views"] and "audit" in entry["stale_views"]["vda"]
            registry = host.service.metrics.registry
            assert registry.get_sample_value("autoextend_stale_views_total",
                                             {"when": "audit"}) == 1
            # Several full polls later: still paused, never resumed, counted once.
            await until(lambda: monitor.polls >= polls + 10, 60, "ten more polls")
            async with guest.vm.qmp("test") as client:
                status = await client.execute("query-status")
            assert isinstance(status, dict) and status["running"] is False, status
            assert host.service.tally.resumes == 0
            assert host.service.tally.stale_view_pauses == 1
            firing = await prom_until(prom, lambda pr: pr.firing("AutoextendStaleView"), 60,
                                      "AutoextendStaleView to fire")
            assert firing[0]["labels"]["instance"] == f"127.0.0.1:{port}"
