"""Issue 29 item 5, libvirt side: each managed drive's ``<driver error_policy=...>`` read from
a real domain's live XML (what the monitor will flag in status, metric and alert)."""

from __future__ import annotations

from pathlib import Path

import anyio
import libvirt
import pytest

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.guest import GuestJob
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.monitor.protocols import HypervisorEvent, VmAppeared

from .harness import lab_domains

pytestmark = pytest.mark.slow


async def test_error_policies_of_real_domains(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with lab_domains(libvirtd.uri, lab_tmp_path, lab_guest) as rig:
        hypervisor = rig.hypervisor
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](256)
        async with anyio.create_task_group() as tg:
            await tg.start(hypervisor.run, send)
            policies = {"pol-report": "report", "pol-stop": "stop", "pol-enospc": "enospace"}
            for name, policy in policies.items():
                _, device = await rig.disk(f"{name}-disk", 32, 256)
                xml = guest_domain_xml(name, rig.guest, [device], GuestJob(mib=1),
                                       lab_tmp_path / f"{name}.serial", error_policy=policy)
                rig.domains.append(name)
                await rig.call(rig.conn.createXML, xml, libvirt.VIR_DOMAIN_START_PAUSED)
            seen: set[str] = set()
            with anyio.fail_after(30):
                async for event in receive:
                    if isinstance(event, VmAppeared):
                        seen.add(event.vm)
                    if seen >= set(policies):
                        break
            found = {name: await hypervisor.error_policies(name) for name in policies}
            # what the monitor gets with each drive: DriveInfo.error_policy
            drives = {name: await hypervisor.drives(name) for name in policies}
            tg.cancel_scope.cancel()
    assert found == {name: {"vda[1]": (policy, "report")} for name, policy in policies.items()}
    in_qemu_words = {"report": "report", "stop": "stop", "enospace": "enospc"}
    assert {name: [(d.drive, d.error_policy) for d in found_drives]
            for name, found_drives in drives.items()} == {
        name: [("vda[1]", in_qemu_words[policy])] for name, policy in policies.items()}
