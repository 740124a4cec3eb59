"""Issue 14 in mailbox mode: the SPM publishes its VG figures in the metadata area and the
other host's gauges and status show them (two ``autoextend run`` processes, loop VG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.capacity import record
from autoextend.lab.multihost import HostProcess, pool
from autoextend.volumes import VolumeRef

pytestmark = pytest.mark.slow
MiB = 1 << 20
SERIES = 'autoextend_vg_{}_bytes{{vg="demo"}}'


async def gauges_until(host: HostProcess, want: dict[str, float], what: str) -> None:
    seen: dict[str, Any] = {}
    with anyio.fail_after(60):
        while True:
            try:
                values = await anyio.to_thread.run_sync(host.scrape)
            except OSError:  # the host is still starting (metrics come up after its join)
                values = {}
            seen = {k: values.get(SERIES.format(k)) for k in want}
            if seen == want:
                return
            await anyio.sleep(0.2)  # poll the scrape until the figures arrive
    raise AssertionError(f"{what}: {seen}")


async def test_other_hosts_show_the_spm_figures(lab_tmp_path: Path) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64) as p:
        spm = await p.wait_for_spm()
        other = p.hosts[2 if spm == 1 else 1]
        await p.volumes.set_vg_capacity("demo", 512 * MiB)
        await p.volumes.create(VolumeRef("demo", "parked"), 100 * MiB, attach=False)
        await gauges_until(other, {"size": 512 * MiB, "free": 412 * MiB},
                           "the SPM's figures on the other host")
        raw = await anyio.to_thread.run_sync(p.metadata.read_bytes)
        offset = record.record_offset(0, 512)
        rec = record.decode(raw[offset:offset + 512])
        assert rec is not None and rec.host_id == spm
        assert [(f.vg, f.size, f.free) for f in rec.figures] == [("demo", 512 * MiB, 412 * MiB)]
        status = await other.status()
        [vg] = status["capacity"]["vgs"]
        assert vg["vg"] == "demo" and vg["level"] == "ok" and vg["free"] == 412 * MiB
        await p.volumes.set_vg_capacity("demo", 1024 * MiB)  # the pool grows
        await gauges_until(other, {"size": 1024 * MiB, "free": 924 * MiB},
                           "the grown VG on the other host")
        await p.volumes.remove(VolumeRef("demo", "parked"))
