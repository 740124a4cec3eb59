"""Issue 11 over libvirt: an ENOSPC pause on a drive autoextend does not manage is never
resumed. Resumes are counted from libvirt's side (lifecycle events on the test's own
connection), not from autoextend's counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest
from structlog.testing import capture_logs

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.fixtures import ThinVolumeFactory
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.waiting import until

from .harness import MiB, served

pytestmark = pytest.mark.slow
# Time is the subject here: nothing may happen in these windows (fixed sleeps on purpose).
OBSERVE_S = 30.0  # the window, at a 0.2 s poll (150 full resyncs)
AFTER_GROW_S = 6.0  # after the drive is grown by hand: 30 more resyncs


async def test_enospc_on_unmanaged_drive_is_never_resumed(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path,
    thin_volume: ThinVolumeFactory,
) -> None:
    name = "lv-unmanaged"
    outside = await thin_volume(16 * MiB, 1 << 30, name="outside.img")
    with capture_logs() as logs:
        async with served(libvirtd.uri, lab_tmp_path, lab_guest, poll_interval_s=0.2) as rig:
            _, vda = await rig.disk(f"{name}-vda", 64, 1024)
            job = await anyio.to_thread.run_sync(
                with_expected_md5, GuestJob(mib=64, device="/dev/vdb"))
            xml = guest_domain_xml(name, rig.guest, [vda, outside.device], job,
                                   lab_tmp_path / f"{name}.serial")
            # the test's own connection, opened after libvirtaio is registered: its lifecycle
            # events arrive on this event loop
            events: list[tuple[int, int]] = []
            counter = await anyio.to_thread.run_sync(libvirt.open, rig.uri)

            def lifecycle(_c: Any, dom: Any, event: int, detail: int, _o: Any) -> None:
                if dom.name() == name:
                    events.append((event, detail))

            cb = counter.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None)
            try:
                rig.domains.append(name)
                await rig.call(rig.conn.createXML, xml, 0)

                def resumes() -> int:
                    """RESUMED events after the first SUSPENDED (libvirt sends one RESUMED at
                    start: it starts QEMU with -S and continues it)."""
                    kinds = [e for e, _ in events]
                    if libvirt.VIR_DOMAIN_EVENT_SUSPENDED not in kinds:
                        return 0
                    after = kinds[kinds.index(libvirt.VIR_DOMAIN_EVENT_SUSPENDED):]
                    return after.count(libvirt.VIR_DOMAIN_EVENT_RESUMED)

                def state() -> str | None:
                    vm = rig.vm(name)
                    return vm["state"] if vm else None

                await until(lambda: state() == "paused-enospc-unmanaged", 120,
                            "the unmanaged ENOSPC pause")
                await until(lambda: any(e == libvirt.VIR_DOMAIN_EVENT_SUSPENDED
                                        for e, _ in events), 30, "libvirt's SUSPENDED event")
                await anyio.sleep(OBSERVE_S)  # time is the subject: the observation window
                assert resumes() == 0, events
                paused = rig.paused(name)
                assert paused is not None and paused.startswith("enospc, unmanaged vdb"), paused
                assert rig.tally.unmanaged == 1
                assert rig.tally.resumes == 0

                await outside.grow(to=256 * MiB)  # grown by hand: still not ours to resume
                await anyio.sleep(AFTER_GROW_S)  # time is the subject: still not resumed
                assert resumes() == 0
                assert state() == "paused-enospc-unmanaged"
                assert await rig.state(name) == (libvirt.VIR_DOMAIN_PAUSED,
                                                 libvirt.VIR_DOMAIN_PAUSED_IOERROR)
            finally:
                await anyio.to_thread.run_sync(counter.domainEventDeregisterAny, cb)
                await anyio.to_thread.run_sync(counter.close)
    warnings = [e for e in logs if e.get("log_level") == "warning"
                and "does not manage" in str(e.get("event"))]
    assert len(warnings) == 1, warnings
    assert warnings[0]["vm"] == name and str(warnings[0]["drive"]).startswith("vdb")
    assert warnings[0]["path"] == outside.device
