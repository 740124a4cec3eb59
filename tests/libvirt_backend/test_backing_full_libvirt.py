"""Issue 30 item 2 over libvirt: a full backing store is never extended.

As ``tests/e2e/test_backing_full_qmp.py``, through libvirtd: the loop volume's file sits on
a small tmpfs that a filler file makes full before the guest runs (a write that found some
free pages would be cut short, which the loop driver reports as EIO, not ENOSPC); space is
freed by growing the tmpfs and deleting the filler.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoextend.lab.guest import GuestJob
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.waiting import until
from tests.fullstore import full_warnings, small_tmpfs

from .harness import VG, MiB, served

pytestmark = pytest.mark.slow
START_MIB = 256  # chunk 64 MiB, 50 %: watermark 32 MiB, threshold at 224 MiB
FULL_MIB = 32
WRITE_MIB = 64
# Time is the subject here: nothing may be extended while the storage stays full.
FULL_WINDOW_S = 8.0


@pytest.mark.timeout(900)  # a boot under TCG through libvirtd, a backoff, the write
async def test_full_backing_store_is_never_extended_over_libvirt(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path,
) -> None:
    name = "lv-bsf"
    vg_dir = lab_tmp_path / "volumes" / VG
    with capture_logs() as logs:
        async with small_tmpfs(vg_dir, FULL_MIB) as store, \
                served(libvirtd.uri, lab_tmp_path, lab_guest, poll_interval_s=0.2) as rig:
            domain = await rig.start(name, GuestJob(mib=WRITE_MIB), start_mib=START_MIB,
                                     virtual_mib=1024, paused=True)
            await until(lambda: any(d["state"] == "set"
                                    for d in (rig.vm(name) or {}).get("drives", [])),
                        60, "the threshold armed", describe=lambda: rig.vm(name))
            await store.fill()
            dom = await rig.dom(name)
            await rig.call(dom.resume)
            await until(lambda: rig.paused(name) == "enospc, backing store full", 300,
                        "the backing-store-full classification",
                        describe=lambda: (rig.vm(name), str(rig.history)))
            assert rig.tally.backing_full == 1
            await anyio.sleep(FULL_WINDOW_S)  # still full: resumed under backoff, never grown
            assert rig.tally.extends == 0 and rig.tally.failed == 0
            volume_file = vg_dir / domain.volume.lv
            assert volume_file.stat().st_size == START_MIB * MiB
            assert rig.tally.backing_full == 1
            resumed_while_full = rig.tally.resumes
            assert resumed_while_full >= 2

            await store.free(4 * START_MIB)
            result = await rig.finished(domain, 600)
            assert result.verified and result.written_mib == WRITE_MIB, result
            assert rig.tally.extends == 0
            assert volume_file.stat().st_size == START_MIB * MiB
            assert rig.tally.backing_full == 1
            assert rig.tally.resumes > resumed_while_full
    warnings = full_warnings(logs)
    assert len(warnings) == 1, warnings
    assert warnings[0]["vm"] == name and warnings[0]["vg"] == VG
