"""Issue 27 item 1 end to end: a volume an idle guest uses on another host is not reduced.

Two ``autoextend run`` hosts share a pool (mailbox mode). A real guest runs on host B and
stays idle (a trickle of writes, no extend) past the SPM's hot window, so the old "asked to
extend it lately" check no longer refuses; host A asks to reduce the guest's volume. The SPM
reads the hosts' in-use records (``spm/inusegate.py``) and refuses with one line naming
host B; the volume keeps its size.

The lab's hosts share one machine, so host A's own check ("no process on this host has it
open", a scan of /proc) would see host B's QEMU and refuse first. Host A is therefore
restarted in its own PID namespace with its own /proc (``unshare``), as on a machine of its
own: its scan sees none of B's processes, and what refuses is the SPM."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoextend.lab.multihost import VG, pool
from autoextend.lab.singlehost import create_qcow2_disk
from autoextend.lab.waiting import until
from autoextend.volumes import VolumeRef

from .alone import cli, host_status, idle_guest_elsewhere

pytestmark = pytest.mark.slow
MiB = 1 << 20
HOT = 2.0


@pytest.mark.timeout(900)
async def test_a_volume_an_idle_guest_uses_on_another_host_is_not_reduced(
    lab_tmp_path: Path,
) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, hot_window_s=HOT) as p:
        guest_host, asker, g = await idle_guest_elsewhere(p)
        name = f"{g.volume.vg}/{g.volume.lv}"

        async def listed() -> bool:
            status = await host_status(p, guest_host)
            in_use = (status.get("spm") or {}).get("in_use") or {}
            return bool(status.get("vms")) and (in_use.get("volumes") or 0) >= 1

        await until(listed, 300, "host B's monitor to see the guest and publish its volume")
        await anyio.sleep(2 * HOT)  # time is the subject: idle past the hot window
        size = (await anyio.Path(p.directory / "volumes" / g.volume.vg / g.volume.lv)
                .stat()).st_size
        code, line = await cli(p, asker, "volume", "reduce", name)
        assert code == 1, line
        assert f"in use on host {guest_host}" in line, line
        assert (await anyio.Path(p.directory / "volumes" / g.volume.vg / g.volume.lv)
                .stat()).st_size == size
        code, dry = await cli(p, asker, "volume", "reduce", name, "--dry-run")
        assert code == 1 and f"host {guest_host}" in dry, dry
        assert g.vm.returncode is None  # the guest still runs


@pytest.mark.timeout(900)
async def test_a_volume_prepared_on_another_host_is_not_reduced(lab_tmp_path: Path) -> None:
    """The host's claim with real storage: ``volume prepare`` on host B lists the volume in
    B's in-use record before any guest runs on it (it reads the SPM's intent record after:
    nothing names the volume, so it goes on), and host A's reduce is refused naming B. No
    process holds the volume anywhere, so only B's claim can refuse."""
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, hot_window_s=HOT) as p:
        spm = await p.wait_for_spm()
        other = next(h for h in p.hosts if h != spm)

        async def both_publish() -> bool:
            statuses = await p.statuses()
            return all((((statuses.get(h) or {}).get("spm") or {}).get("in_use") or {})
                       .get("published") for h in p.hosts)

        # Both hosts publish: a refusal can then only name a claim, not a missing record.
        await until(both_publish, 300, "both hosts to publish their in-use records")
        for preparer, asker in ((other, spm), (spm, other)):
            volume, _ = await create_qcow2_disk(
                p.host_volumes(preparer), p.stack, VolumeRef(VG, f"claimed-on-{preparer}"),
                160, 1024)
            name = f"{volume.vg}/{volume.lv}"
            code, line = await cli(p, preparer, "volume", "prepare", name)
            assert code == 0, line
            code, line = await cli(p, asker, "volume", "reduce", name)
            assert code == 1, line
            assert f"in use on host {preparer}" in line, line
            size = (await anyio.Path(p.directory / "volumes" / volume.vg / volume.lv)
                    .stat()).st_size
            assert size == 160 * MiB
