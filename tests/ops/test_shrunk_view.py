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


async def prom_until(prom: Prometheus, cond: Callable[[Prometheus], Any], timeout: float,  # noqa: ASYNC109
                     what: str) -> Any:
    with anyio.move_on_after(timeout):
        while True:
            found = await anyio.to_thread.run_sync(cond, prom)
            if found:
                return found
            await anyio.sleep(0.5)  # poll with a deadline (each look is a Prometheus query)
    raise AssertionError(f"{what}: not within {timeout} s; alerts: {prom.alerts()}\n{prom.log()}")


async def test_a_volume_shrunk_under_a_running_guest_pauses_it_for_good(
    lab_tmp_path: Path,
) -> None:
    port = free_port()
    async with lab_host(workdir=lab_tmp_path / "host", poll_interval_s=0.5, metrics_port=port,
                        extra={"policy": {"full_poll_interval_s": 1.0}}) as host:
        with prometheus(lab_tmp_path / "prometheus", [f"127.0.0.1:{port}"]) as prom:
            await prom_until(prom, lambda pr: pr.query("up == 1"), 60, "the host scraped")
            # 48 MiB at 256 KiB/s: the guest writes for minutes, below 96 MiB all along.
            guest = await host.start_guest("shr1", GuestJob(mib=48, rate_kib_s=256),
                                           start_mib=128, virtual_mib=512)
            monitor = host.service.monitor
            backing = host.volumes.file_path(guest.volume)

            def vm() -> dict[str, Any]:
                return next((v for v in monitor.snapshot() if v["vm"] == "shr1"), {})

            await guest.vm.wait_for_start(timeout=120)
            await until(lambda: (vm().get("drives") or [{}])[0].get("state") == "set", 60,
                        "the drive armed", describe=vm)
            await anyio.to_thread.run_sync(os.truncate, backing, 96 * MiB)
            assert loopdev.size_of(guest.device) == 128 * MiB  # the view did not follow
            polls = monitor.polls
            registry = host.service.metrics.registry

            def shrunk_pauses() -> float:
                return registry.get_sample_value("autoextend_shrunk_view_pauses_total") or 0

            await until(lambda: shrunk_pauses() == 1, 60, "the audit pausing the guest",
                        describe=vm)
            async with guest.vm.qmp("test") as client:
                status = await client.execute("query-status")
            assert isinstance(status, dict) and status["running"] is False, status
            entry = vm()
            assert "vda" in entry["stale_views"] and "shrank" in entry["stale_views"]["vda"]
            assert registry.get_sample_value("autoextend_stale_views_total",
                                             {"when": "audit"}) == 0
            # Ten polls later: still paused, never resumed, nothing written past the end.
            await until(lambda: monitor.polls >= polls + 10, 60, "ten more polls")
            async with guest.vm.qmp("test") as client:
                status = await client.execute("query-status")
            assert isinstance(status, dict) and status["running"] is False, status
            assert host.service.tally.resumes == 0 and shrunk_pauses() == 1
            assert (await anyio.Path(backing).stat()).st_size == 96 * MiB
            firing = await prom_until(prom, lambda pr: pr.firing("AutoextendShrunkView"), 60,
                                      "AutoextendShrunkView to fire")
            assert firing[0]["labels"]["instance"] == f"127.0.0.1:{port}"
