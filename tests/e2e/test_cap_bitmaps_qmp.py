"""Issue 30 item 3 end to end over QMP: the honest cap with a persistent bitmap.

A small disk (64 MiB virtual, 16 MiB volume at the start) whose qcow2 holds a persistent
dirty bitmap; a real TCG guest writes every byte of it. autoextend grows the volume to the
measured cap (``qemu-img measure``'s fully allocated size + the bitmap + one cluster), which
is below ``capacity x 1.1``; the guest never pauses at the cap, its data verifies, and QEMU
stores the bitmap when it exits (the image checks clean, the bitmap is not left in use).
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoextend.lab import proc
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.qemu import guest_spec, launch
from autoextend.lab.singlehost import lab_host
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.monitor import policy
from autoextend.qemuimg import qemu_img_fully_allocated

pytestmark = pytest.mark.slow
MiB = 1 << 20
KiB = 1 << 10
VIRTUAL_MIB = 64
START_MIB = 16
EXTENT = 4 * MiB  # the lab host's extent
BITMAP = ("backup-0", 512)  # persistent; the finest granularity, the most bytes


@pytest.mark.timeout(900)  # a boot and a full write of the disk under TCG
async def test_full_disk_with_a_persistent_bitmap_never_pauses_at_its_cap(
        lab_tmp_path: Path) -> None:
    capacity = VIRTUAL_MIB * MiB
    full = await qemu_img_fully_allocated(capacity, 64 * KiB)
    assert full is not None
    cap = policy.measured_cap(full, policy.bitmap_bytes(capacity, 64 * KiB, (BITMAP,)),
                              64 * KiB, EXTENT)
    factor_cap = policy.round_up(int(capacity * 1.1) + 1, EXTENT)
    assert cap < factor_cap  # tighter than the guess, and (below) enough
    with capture_logs() as logs:
        async with lab_host(workdir=lab_tmp_path, poll_interval_s=0.2) as host:
            volume, device = await host.create_disk("cap-disk", START_MIB, VIRTUAL_MIB)
            await proc.run(["qemu-img", "bitmap", "--add", "-g", str(BITMAP[1]), device,
                            BITMAP[0]])
            job = await anyio.to_thread.run_sync(with_expected_md5, GuestJob(mib=VIRTUAL_MIB))
            sock = host.workdir / "qmp" / "cap.sock"
            spec = guest_spec("cap", host.image, [device], job,
                              extra_args=("-name", "cap", "-qmp",
                                          f"unix:{sock},server=on,wait=off"))
            vm = await launch(spec, host.workdir / "vms" / "cap")
            host._stack.push_async_callback(vm.stop)
            await until(lambda: bool(host.vm_status("cap").get("drives")), 60,
                        "the service sees the guest")
            drive = host.vm_status("cap")["drives"][0]
            assert drive["cap"] == cap, (drive, cap)
            result = await vm.result(timeout=600)
            assert result.verified and result.written_mib == VIRTUAL_MIB, result
            await vm.wait_exit(timeout=60)
            size = (host.workdir / "volumes" / volume.vg / volume.lv).stat().st_size
            assert size <= cap
            check = await qemu_img_check(device)
            assert check.clean, check.raw
            info = json.loads(await proc.run(["qemu-img", "info", "--output=json", device]))
            bitmaps = info["format-specific"]["data"]["bitmaps"]
            assert [(b["name"], b["granularity"]) for b in bitmaps] == [BITMAP]
            assert "in-use" not in bitmaps[0]["flags"], bitmaps  # stored at exit
            print(f"cap {cap} (factor {factor_cap}), volume {size}, image end "
                  f"{check.image_end_offset}")
    at_cap = [e for e in logs if "at its cap" in str(e.get("event"))]
    assert at_cap == [], at_cap
