"""The lab guest as a libvirt domain through the lab's libvirtd: starts in seconds, pauses
with the IO_ERROR_REASON ``enospc`` event when it fills its volume, resumes after a grow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.events import ensure_libvirt_events
from autoextend.lab.fixtures import ThinVolumeFactory
from autoextend.lab.guest import GuestJob, find_result, with_expected_md5
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd

MiB = 1 << 20
pytestmark = pytest.mark.slow


async def test_domain_pauses_with_enospc_event(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, thin_volume: ThinVolumeFactory,
    lab_tmp_path: Path,
) -> None:
    ensure_libvirt_events()
    vol = await thin_volume(size=64 * MiB, virtual_size=1 << 30)
    job = await anyio.to_thread.run_sync(with_expected_md5, GuestJob(mib=80, seed=9))
    serial = lab_tmp_path / "serial.log"
    xml = guest_domain_xml("lab-enospc", lab_guest, [vol.device], job, serial)

    send, receive = anyio.create_memory_object_stream[tuple[Any, ...]](100)

    def on_io_error(conn: Any, dom: Any, src: str, alias: str, action: int, reason: str,
                    opaque: Any) -> None:
        send.send_nowait(("ioerror", src, alias, action, reason))

    def on_lifecycle(conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        send.send_nowait(("life", event, detail))

    conn = await anyio.to_thread.run_sync(libvirtd.connect)
    callbacks = [
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
                                    on_io_error, None),
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                    on_lifecycle, None),
    ]
    try:
        started = time.monotonic()
        dom = await anyio.to_thread.run_sync(conn.createXML, xml, 0)
        start_seconds = time.monotonic() - started
        print(f"domain start took {start_seconds:.2f} s")

        with anyio.fail_after(120):
            async for event in receive:
                if event[0] == "ioerror":
                    break
        _, src, alias, action, reason = event
        assert reason == "enospc"
        assert src == vol.device
        assert action == libvirt.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE
        state, why = await anyio.to_thread.run_sync(dom.state)
        assert (state, why) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)

        await vol.grow(by=64 * MiB)
        await anyio.to_thread.run_sync(dom.resume)
        with anyio.fail_after(120):
            async for event in receive:
                if event[:2] == ("life", libvirt.VIR_DOMAIN_EVENT_STOPPED):
                    break
    finally:
        with anyio.CancelScope(shield=True):
            for callback in callbacks:
                conn.domainEventDeregisterAny(callback)
            await anyio.to_thread.run_sync(conn.close)
    result = find_result(serial.read_text(errors="replace"))
    assert result is not None and result.verified, result
    assert result.written_mib == 80
    assert (await vol.check()).clean
