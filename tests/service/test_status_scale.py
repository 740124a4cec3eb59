"""``autoextend status`` of a big host: 50 VMs x 20 drives with UUID names (about 540 KB of
JSON, eight times the request limit) arrives whole through the real service's control socket
and the real CLI."""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import anyio

from autoextend.lab.singlehost import host_settings
from autoextend.lab.waiting import until
from autoextend.monitor.core import Monitor
from autoextend.monitor.memory import MemoryExtender, MemoryHypervisor, MemoryVolumes
from autoextend.service import Service
from autoextend.volumes import VolumeRef

MiB = 1 << 20
VMS, DRIVES = 50, 20


def drive_count(service: Service) -> int:
    return sum(len(v["drives"]) for v in service.monitor.snapshot())


async def test_status_of_1000_drives(tmp_path: Path) -> None:
    settings = host_settings(tmp_path)
    service = Service(settings)
    volumes = MemoryVolumes()
    hv = MemoryHypervisor(volumes)
    for _ in range(VMS):
        hv.add_vm(str(uuid.uuid4()), {
            f"vd{chr(ord('a') + i)}": (VolumeRef(str(uuid.uuid4()), str(uuid.uuid4())),
                                        1024 * MiB, 8192 * MiB)
            for i in range(DRIVES)
        })
    # The real service and control socket; only the hypervisor and the volumes are in memory.
    service.hypervisor = hv
    service.monitor = Monitor(hv, MemoryExtender(volumes), settings.policy, service.clock,
                              observer=service.tally)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\ncontrol_socket = "{settings.service.control_socket}"\n')
    cmd = [sys.executable, "-m", "autoextend", "--config", str(cfg), "status"]
    async with anyio.create_task_group() as tg:
        await tg.start(service.run)
        await until(lambda: drive_count(service) == VMS * DRIVES, 120, "1000 drives seen")
        started = time.monotonic()
        proc = await anyio.run_process([*cmd, "--json"], check=False)
        took = time.monotonic() - started
        readable = await anyio.run_process(cmd, check=False)
        tg.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(proc.stdout) > 8 * 64 * 1024  # beyond the old 64 KiB limit, many times
    status = json.loads(proc.stdout)
    assert len(status["vms"]) == VMS
    assert sum(len(v["drives"]) for v in status["vms"]) == VMS * DRIVES
    assert {v["vm"] for v in status["vms"]} == set(hv.vms)
    assert readable.returncode == 0, readable.stderr.decode()
    assert len(readable.stdout.decode().splitlines()) == 1 + VMS + VMS * DRIVES
    print(f"status --json of {VMS * DRIVES} drives ({len(proc.stdout)} bytes): {took:.2f} s")
