"""The rig of the view-audit tests (``test_stale_audit.py``, ``test_shrunk_view.py``; a plain
module, not a test module): one lab host (QMP, loop volumes, metrics on 127.0.0.1, a poll
every 0.5 s and a full poll every second) scraped by a real Prometheus loading the shipped
alert rules, and a guest that writes slowly into a 128 MiB volume, its drive armed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoextend.lab.guest import GuestJob
from autoextend.lab.singlehost import Guest, LabHost, lab_host
from autoextend.lab.waiting import until

from .promserver import Prometheus, free_port, prom_until, prometheus


@dataclass
class AuditRig:
    host: LabHost
    prom: Prometheus
    port: int
    guest: Guest
    name: str

    def vm(self) -> dict[str, Any]:
        """The guest's entry in the monitor's status data ({} while it has none)."""
        return next((v for v in self.host.service.monitor.snapshot() if v["vm"] == self.name),
                    {})

    @property
    def instance(self) -> str:
        """The host as Prometheus labels it."""
        return f"127.0.0.1:{self.port}"

    async def query_status(self) -> Any:
        """What QEMU says of the guest (``query-status``)."""
        async with self.guest.vm.qmp("test") as client:
            return await client.execute("query-status")

    async def firing(self, alert: str) -> Any:
        """The firing ``alert`` entries, once there are some (within 60 s)."""
        return await prom_until(self.prom, lambda pr: pr.firing(alert), 60, f"{alert} to fire")


@asynccontextmanager
async def armed_guest(workdir: Path, name: str) -> AsyncIterator[AuditRig]:
    """The rig, its guest ``name`` started and its drive armed (threshold set)."""
    port = free_port()
    async with lab_host(workdir=workdir / "host", poll_interval_s=0.5, metrics_port=port,
                        extra={"policy": {"full_poll_interval_s": 1.0}}) as host:
        with prometheus(workdir / "prometheus", [f"127.0.0.1:{port}"]) as prom:
            await prom_until(prom, lambda pr: pr.query("up == 1"), 60, "the host scraped")
            # 48 MiB at 256 KiB/s: the guest writes for minutes, below 96 MiB all along.
            guest = await host.start_guest(name, GuestJob(mib=48, rate_kib_s=256),
                                           start_mib=128, virtual_mib=512)
            rig = AuditRig(host, prom, port, guest, name)
            await guest.vm.wait_for_start(timeout=120)
            await until(lambda: (rig.vm().get("drives") or [{}])[0].get("state") == "set", 60,
                        "the drive armed", describe=rig.vm)
            yield rig
