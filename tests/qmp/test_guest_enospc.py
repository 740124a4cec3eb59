"""A real guest fills a 64 MiB thin volume: ENOSPC pause seen through the QMP backend, then
grown and resumed through it, and the guest's data verifies (slow: boots a TCG guest)."""

from __future__ import annotations

import anyio
import pytest
from qmp_testlab import Lookup, MiB, fast_settings, qemu_lab, running, wait_for

from autoextend.clock import MonotonicClock
from autoextend.monitor.protocols import (
    EnospcPause,
    HypervisorEvent,
    PauseReason,
    ThresholdCrossed,
    VmGone,
    VmPaused,
    VmResumed,
)
from autoextend.qmp.hypervisor import QmpHypervisor

pytestmark = pytest.mark.slow


async def test_guest_enospc_pause_then_grow_and_resume() -> None:
    guestimage = pytest.importorskip("autoextend.lab.guestimage")
    guest = pytest.importorskip("autoextend.lab.guest")
    thinvol = pytest.importorskip("autoextend.lab.thinvol")
    image = await guestimage.build_guest()
    job = guest.GuestJob(mib=128)
    async with qemu_lab() as lab:
        vol = await lab.volume(64 * MiB, 1 << 30)
        serial = lab.root / "serial.log"
        await lab.start_custom("guest", [
            "-machine", "q35", "-accel", "tcg", "-m", "256", "-nodefaults", "-display", "none",
            "-S", "-no-reboot", "-serial", f"file:{serial}",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", guest.build_cmdline(job),
            "-blockdev", f"driver=host_device,filename={vol.device},node-name=file0,"
                         "cache.direct=on,aio=native",
            "-blockdev", "driver=qcow2,file=file0,node-name=fmt0",
            "-device", "virtio-blk-pci,drive=fmt0,id=vda,werror=enospc,rerror=report",
        ])
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            [vda] = await hv.drives("guest")
            assert (vda.node, vda.physical) == ("file0", 64 * MiB)
            await hv.set_threshold("guest", vda, 32 * MiB)
            await hv.resume("guest")  # leave -S

            seen: list[HypervisorEvent] = []
            with anyio.fail_after(120):
                while not isinstance(event := await events.receive(), VmPaused):
                    seen.append(event)
            assert event == VmPaused("guest", PauseReason.ENOSPC)
            crossed = [e for e in seen if isinstance(e, ThresholdCrossed)]
            assert [(c.drive, c.threshold) for c in crossed] == [("vda", 32 * MiB)]
            assert EnospcPause("guest", "vda") in seen
            state = await hv.run_state("guest")
            assert not state.running and state.pause_reason is PauseReason.ENOSPC

            await lab.grow(vol, 256 * MiB)
            [vda] = await hv.drives("guest")
            assert vda.physical == 256 * MiB
            assert vda.allocation > 60 * MiB
            await hv.set_threshold("guest", vda, 224 * MiB)
            await hv.resume("guest")
            await wait_for(events, lambda e: e == VmResumed("guest"))
            # the guest finishes, powers off, QEMU exits and removes its socket
            gone = await wait_for(events, lambda e: isinstance(e, VmGone) and e.vm == "guest",
                                  timeout=180)
            assert gone == VmGone("guest", clean=True)  # a guest poweroff: a clean stop

        result = guest.find_result(serial.read_text())
        assert result is not None, serial.read_text()[-2000:]
        assert result.verified and result.written_mib == 128, result
        check = await thinvol.qemu_img_check(vol.device)
        assert check.clean, check
