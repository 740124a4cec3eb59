"""Issue 31, soak finding 2, through libvirt: a domain autoextend paused for ENOSPC on host A
(VG full), migrated live while paused to host B (``virDomainMigrate3``; libvirt migrates a
paused domain paused), is resumed on B once B adopted A's claim and the VG has room again;
a domain an operator suspended is migrated and stays paused. Two ``autoextend run`` hosts
(libvirt hypervisor, mailbox mode), one lab libvirtd each; no hook. The QMP variant is
tests/e2e/test_migration_handoff.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.guest import GuestJob, find_result, with_expected_md5
from autoextend.lab.libvirt_migrate import UNLIMITED_MIB_S, live_migration
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.multihost import VG, Pool, pool
from autoextend.lab.singlehost import create_qcow2_disk
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.lvm.loop_backend import vg_used
from autoextend.volumes import VolumeRef

pytestmark = pytest.mark.slow
START_MIB = 64


@dataclass
class Setup:
    p: Pool
    conns: dict[int, Any]
    source: int
    target: int
    volume: VolumeRef
    device: str
    src_serial: Path
    dst_serial: Path

    async def state(self, host: int, name: str) -> list[int]:
        def read() -> list[int]:
            return list(self.conns[host].lookupByName(name).state())
        return await anyio.to_thread.run_sync(read)

    async def migrate(self, name: str) -> str:
        """Migrate ``name`` (paused) to the target at full speed; the target's device."""
        dest_device = await self.p.host_volumes(self.target).attach(self.volume)
        async with live_migration(self.conns[self.source], self.conns[self.target], name,
                                  devices={self.device: dest_device},
                                  serial_log=self.dst_serial,
                                  socket_path=self.p.directory / f"{name}.mig",
                                  bandwidth_mib_s=UNLIMITED_MIB_S) as migration:
            assert await migration.finish() is None, migration.error
        return dest_device


@asynccontextmanager
async def started(lab_tmp_path: Path, pair: tuple[LabLibvirtd, LabLibvirtd], name: str,
                  job: GuestJob) -> AsyncIterator[Setup]:
    uris = {1: pair[0].uri, 2: pair[1].uri}
    async with pool(2, directory=lab_tmp_path, chunk_mib=16, poll_interval_s=0.5,
                    libvirt_uris=uris) as p:
        source = await p.wait_for_spm()
        target = 3 - source
        conns = {h: await anyio.to_thread.run_sync(libvirt.open, uris[h]) for h in (1, 2)}
        for conn in conns.values():
            p.stack.push_async_callback(anyio.to_thread.run_sync, conn.close)

        async def destroy() -> None:
            def run() -> None:
                for conn in conns.values():
                    try:
                        conn.lookupByName(name).destroy()
                    except libvirt.libvirtError:
                        pass
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(run)

        volume, device = await create_qcow2_disk(
            p.host_volumes(source), p.stack, VolumeRef(VG, f"{name}-disk"), START_MIB, 1024)
        p.stack.push_async_callback(destroy)
        job = await anyio.to_thread.run_sync(with_expected_md5, job)
        setup = Setup(p, conns, source, target, volume, device,
                      lab_tmp_path / f"{name}-src.serial", lab_tmp_path / f"{name}-dst.serial")
        xml = guest_domain_xml(name, p.image, [device], job, setup.src_serial)
        await anyio.to_thread.run_sync(conns[source].createXML, xml, 0)

        async def armed() -> bool:
            drives = (await p.hosts[source].vm_status(name)).get("drives") or [{}]
            return bool(drives[0].get("state") == "set")
        await until(armed, 60, f"host A arming {name}")
        yield setup


async def test_libvirt_enospc_pause_is_resumed_on_the_destination(
    lab_tmp_path: Path, libvirtd_pair: tuple[LabLibvirtd, LabLibvirtd]
) -> None:
    name = "lhand1"
    job = GuestJob(mib=96, rate_kib_s=12 * 1024, seed=3101)
    root = str(lab_tmp_path / "volumes" / VG)
    async with started(lab_tmp_path, libvirtd_pair, name, job) as s:
        src, dst = s.p.hosts[s.source], s.p.hosts[s.target]
        await s.p.volumes.set_vg_capacity(VG, await anyio.to_thread.run_sync(vg_used, root))

        async def paused_on_a() -> bool:
            return (await src.vm_status(name)).get("paused") == "enospc"
        await until(paused_on_a, 120, "the guest paused for ENOSPC on host A")
        assert (await s.state(s.source, name)) == [libvirt.VIR_DOMAIN_PAUSED,
                                                  libvirt.VIR_DOMAIN_PAUSED_IOERROR]
        dest_device = await s.migrate(name)
        print("paused state on the destination:", await s.state(s.target, name))
        async def adopted() -> bool:
            return bool(dst.events("adopted the ENOSPC pause of a vm that arrived paused",
                                   vm=name))
        await until(adopted, 90, "host B adopting host A's claim")
        assert (await s.state(s.target, name))[0] == libvirt.VIR_DOMAIN_PAUSED  # VG full
        await s.p.volumes.set_vg_capacity(VG, None)

        def result_line() -> Any:
            try:
                return find_result(s.dst_serial.read_text(errors="replace"))
            except FileNotFoundError:
                return None
        await until(result_line, 180, "the guest's result on the destination")
        result = result_line()
        assert result.verified, result
        assert result.written_mib == job.mib
        assert "I/O error" not in s.dst_serial.read_text(errors="replace")
        assert dst.events("vm resumed", vm=name) and not src.events("vm resumed", vm=name)

        async def gone() -> bool:
            return await dst.vm_status(name) == {}
        await until(gone, 60, "the guest powered off on the destination")
        check = await qemu_img_check(dest_device)
        assert check.clean, check


async def test_libvirt_user_pause_stays_paused_after_migration(
    lab_tmp_path: Path, libvirtd_pair: tuple[LabLibvirtd, LabLibvirtd]
) -> None:
    """The negative control: an operator's suspend is migrated, and nobody resumes it."""
    name = "lhand2"
    job = GuestJob(mib=256, rate_kib_s=256, seed=3102)  # still writing when suspended
    async with started(lab_tmp_path, libvirtd_pair, name, job) as s:
        src, dst = s.p.hosts[s.source], s.p.hosts[s.target]
        dom = await anyio.to_thread.run_sync(s.conns[s.source].lookupByName, name)
        await anyio.to_thread.run_sync(dom.suspend)
        async def user_paused() -> bool:
            return (await src.vm_status(name)).get("paused") == "user"
        await until(user_paused, 30, "host A seeing the operator's pause")
        await s.migrate(name)
        print("paused state on the destination:", await s.state(s.target, name))
        async def gave_up() -> bool:
            return bool(dst.events("no host claimed the pause of a vm that arrived paused: "
                                    "leaving it paused", vm=name))
        await until(gave_up, 150, "host B giving up on a claim")
        assert (await s.state(s.target, name))[0] == libvirt.VIR_DOMAIN_PAUSED
        assert not dst.events("vm resumed", vm=name) and not src.events("vm resumed", vm=name)
