"""Issue 27 in the lab (``autoextend run`` hosts in mailbox mode, real guests, the loop
stand-in's pool ops: ``lvm/loop_pool.py``).

- A guest paused on a full VG resumes after the VG's PV (``<vg>/.pv``) grows and
  ``pool grow`` runs from a third host: the SPM waits for every live host's view of the PV
  (their in-use records), resizes, and the guest finishes with its data verified.
- ``volume remove`` of a volume an idle guest uses on another host is refused with one
  line naming that host (the SPM's in-use gate), and goes through, once, after the guest
  stopped. The asking host runs in its own PID namespace (``alone.restart_alone``): on one
  machine its own holders scan would otherwise see the other host's QEMU and refuse first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import VG, pool
from autoextend.lab.waiting import until
from autoextend.lvm.loop_backend import vg_capacity
from autoextend.lvm.loop_pool import PV_FILE

from .alone import cli, idle_guest_elsewhere, in_use_count, published_and_idle

pytestmark = pytest.mark.slow
MiB = 1 << 20
HOT = 2.0


@pytest.mark.timeout(900)
async def test_a_guest_paused_on_a_full_vg_resumes_after_pool_grow(lab_tmp_path: Path) -> None:
    async with pool(3, directory=lab_tmp_path, chunk_mib=64) as p:
        spm = await p.wait_for_spm()
        guest_host, asker = [h for h in sorted(p.hosts) if h != spm]
        vg_dir = p.directory / "volumes" / VG
        await p.volumes.set_vg_capacity(VG, 64 * MiB)  # only the guest's first 64 MiB fit
        (vg_dir / PV_FILE).touch()
        os.truncate(vg_dir / PV_FILE, 64 * MiB)  # the VG's one PV: 64 MiB so far
        g = await p.start_guest(guest_host, "vm1", GuestJob(mib=160), start_mib=64,
                                virtual_mib=512)
        host = p.hosts[guest_host]

        async def paused_for_space() -> bool:
            for vm in (await host.status())["vms"]:
                if vm["drives"] and vm["paused"] == "enospc":
                    return "no_space" in (vm["drives"][0].get("last_error") or "")
            return False

        await until(paused_for_space, 300, "the guest to pause on the full VG")
        code, line = await cli(p, asker, "pool", "grow", "--vg", VG)  # the PV has not grown
        assert code == 0 and "no PV of the VG has grown" in line, line
        assert await paused_for_space()  # nothing grew: still paused
        os.truncate(vg_dir / PV_FILE, 1024 * MiB)  # the LUN grew on the array
        code, line = await cli(p, asker, "pool", "grow", "--vg", VG)
        assert code == 0 and "1 PV(s) resized" in line, line
        assert vg_capacity(str(vg_dir)) == 1024 * MiB
        result = await g.vm.result(timeout=300)
        assert result.verified, result
        status: dict[str, Any] = await host.status()
        assert status["service"]["resumes"] >= 1


@pytest.mark.timeout(900)
async def test_remove_of_a_volume_an_idle_guest_uses_on_another_host_is_refused(
    lab_tmp_path: Path,
) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, hot_window_s=HOT) as p:
        guest_host, asker, g = await idle_guest_elsewhere(p)
        name = f"{g.volume.vg}/{g.volume.lv}"
        path = p.directory / "volumes" / g.volume.vg / g.volume.lv
        await published_and_idle(p, guest_host, HOT)
        code, line = await cli(p, asker, "volume", "remove", name)
        assert code == 1, line
        assert f"in use on host {guest_host}" in line, line
        assert path.exists() and g.vm.returncode is None
        await g.vm.stop()

        async def released() -> bool:
            return await in_use_count(p, guest_host) == 0

        await until(released, 300, "host B to stop listing the volume")
        code, line = await cli(p, asker, "volume", "remove", name)
        assert code == 0 and line.endswith("removed"), line
        assert not path.exists()
        code, line = await cli(p, asker, "volume", "remove", name)
        assert code == 0 and "not there" in line, line
