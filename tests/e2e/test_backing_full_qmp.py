"""Issue 30 item 2 end to end over QMP: a full backing store is never extended.

The real service (QMP backend, local extender, loop volumes) and a real TCG guest. The VG's
directory is a small tmpfs: the loop volume (256 MiB, sparse) has room, but the file system
under it is full (a filler file takes every free page before the guest runs), so the loop
device fails the guest's writes with ENOSPC -- as a thin array LUN that ran out of space
does. Space is freed by growing the tmpfs and deleting the filler.

Why full before the guest runs: a write that finds *some* free pages is written in part,
and the loop driver turns a short write into EIO (the guest then sees an I/O error, and its
data does not verify). A first page that cannot be had fails the whole request with ENOSPC.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoextend.cli.service import render_status
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.qemu import guest_spec, launch
from autoextend.lab.singlehost import VG, LabHost, lab_host
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from tests.fullstore import full_warnings, small_tmpfs

pytestmark = pytest.mark.slow
MiB = 1 << 20
POLL_S = 0.2
START_MIB = 256  # chunk 128 MiB, 50 %: watermark 64 MiB, threshold at 192 MiB
FULL_MIB = 32  # the tmpfs under the VG (filled before the guest runs)
WRITE_MIB = 64
# Time is the subject here: nothing may be extended while the storage stays full.
FULL_WINDOW_S = 8.0


def metric(host: LabHost, name: str, labels: dict[str, str] | None = None) -> float:
    value = host.service.metrics.registry.get_sample_value(name, labels or {})
    return value or 0.0


async def test_full_backing_store_is_never_extended_and_resumes_when_freed(
        lab_tmp_path: Path) -> None:
    vg_dir = lab_tmp_path / "volumes" / VG
    resume = {"backoff_initial_s": 0.5, "backoff_max_s": 4.0}
    with capture_logs() as logs:
        async with small_tmpfs(vg_dir, FULL_MIB) as store, \
                lab_host(workdir=lab_tmp_path, poll_interval_s=POLL_S,
                         extra={"resume": resume}) as host:
            volume, device = await host.create_disk("bsf-disk", START_MIB, 1024)
            job = await anyio.to_thread.run_sync(with_expected_md5, GuestJob(mib=WRITE_MIB))
            spec = guest_spec("bsf", host.image, [device], job, paused=True,
                              extra_args=("-name", "bsf", "-qmp",
                                          f"unix:{host.workdir / 'qmp' / 'bsf.sock'},"
                                          "server=on,wait=off"))
            vm = await launch(spec, host.workdir / "vms" / "bsf")
            host._stack.push_async_callback(vm.stop)
            # The threshold is armed before the guest runs (an ENOSPC on a drive without
            # one is a full volume: extended, as always).
            await until(lambda: any(d["state"] == "set" for d in
                                    host.vm_status("bsf").get("drives", [])),
                        60, "the threshold armed", describe=lambda: host.vm_status("bsf"))
            await store.fill()
            volume_file = vg_dir / volume.lv
            async with vm.qmp("test") as qmp:
                await qmp.execute("cont")
            await until(lambda: host.vm_status("bsf").get("paused")
                        == "enospc, backing store full", 150,
                        "the backing-store-full classification",
                        describe=lambda: host.vm_status("bsf"))
            assert metric(host, "autoextend_backing_store_full_total", {"vg": VG}) == 1.0
            await anyio.sleep(FULL_WINDOW_S)  # still full: resumed under backoff, never grown
            assert metric(host, "autoextend_extend_requests_total", {"result": "ok"}) == 0.0
            assert volume_file.stat().st_size == START_MIB * MiB
            assert metric(host, "autoextend_backing_store_full_total", {"vg": VG}) == 1.0
            resumed_while_full = metric(host, "autoextend_resumes_total")
            assert 2 <= resumed_while_full <= 6, resumed_while_full  # 0.5+1+2+4 s steps
            line = render_status(await host.service._status({}))
            assert "bsf  PAUSED (enospc, backing store full)" in line, line

            # Space is freed (the array grown: room for everything the guest writes): the
            # next resume under the backoff sticks.
            await store.free(4 * START_MIB)
            result = await vm.result(timeout=600)
            assert result.verified and result.written_mib == WRITE_MIB, result
            assert metric(host, "autoextend_extend_requests_total", {"result": "ok"}) == 0.0
            assert volume_file.stat().st_size == START_MIB * MiB
            assert metric(host, "autoextend_backing_store_full_total", {"vg": VG}) == 1.0
            assert metric(host, "autoextend_resumes_total") > resumed_while_full
            check = await qemu_img_check(device, force_share=True)
            assert check.clean, check.raw
            await vm.stop()
    warnings = full_warnings(logs)
    assert len(warnings) == 1, warnings
    assert (warnings[0]["vm"], warnings[0]["drive"], warnings[0]["vg"]) == ("bsf", "vda", VG)
