"""Issue 30: a write limit left on a real guest's drive by a killed service is given back.

Two ``autoextend run`` hosts share a pool through the storage mailbox (lab timing), with
the QMP hypervisor or each on its own lab libvirtd. A real TCG guest on the host that is not
the SPM writes as fast as it can; its drive has limits of its own (set over the lab's own
QMP monitor, or ``setBlockIoTune``). Once its extensions run, the SPM is stopped
(SIGSTOP): the next extension waits, and the throttle limits the guest's writes (a guest
that fills its headroom first, under load, pauses without a limit: the SPM is continued
and the stall tried again). The
guest's host is then SIGKILLed while the guest is throttled, and the SPM continued: the
limit stays in QEMU (``query-block`` / ``blkdeviotune`` shows it) and in the host's hold file.

- Restarted, the host gives the drive its own limits back (read back the same way)
  and strikes the record out of its hold file. The SPM grew the volume for the killed
  host's request meanwhile, so the restarted host finds its view of the ENOSPC-paused
  guest's volume behind the metadata: it refreshes it and resumes the guest (no stale-view
  hold, ``monitor/viewcheck.py``), and the guest's data verifies.
- Negative control: limits changed by hand while the host was down are kept.
- The guest's QMP socket held by another client at the restart (QEMU serves one at a
  time): the VM cannot be named, so its record is kept (not dropped as gone), and the
  limits are given back once the socket is let go and the VM connects.

No timing is asserted: only the limits QEMU reports, the data and the host's log.
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.guest import GuestJob, GuestResult, find_result, with_expected_md5
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.multihost import Pool, PoolGuest, pool
from autoextend.lab.singlehost import create_qcow2_disk
from autoextend.lab.waiting import until
from autoextend.libvirt_backend.iotune import limits_from, params_of
from autoextend.monitor.protocols import IoLimits
from autoextend.qmp.iolimits import parse_io_limits, throttle_args
from autoextend.volumes import VolumeRef

pytestmark = pytest.mark.slow
MiB = 1 << 20
QDEV = "/machine/peripheral/vda/virtio-backend"
OWN = IoLimits.of({"iops": 200000, "bps_rd": 900 * MiB})
JOB = GuestJob(mib=768)
#: Stalls tried before the test gives up on a guest that outruns the throttle every time.
STALL_ATTEMPTS = 3
THROTTLED = "guest writes throttled until the extension lands"
GIVEN_BACK = "throttle: lifted a write limit a previous run left on the drive " \
             "(the service stopped without lifting it)"
STALE_HOLD = "guest paused: it ran on a stale view of its volume"
WAITING = "throttle: a recorded hold's VM is not connected, and the hypervisor has VMs " \
          "it cannot name yet"
KEPT = "throttle: a drive's limits were changed since a previous run throttled it; " \
       "leaving them as they are"


class QmpDrive:
    """The QMP guest's drive, its limits read and set over the lab's own QMP monitor."""

    def __init__(self, g: PoolGuest) -> None:
        self.g = g

    async def limits(self) -> IoLimits:
        async with self.g.vm.qmp() as qmp:
            reply = await qmp.execute("query-block")
        found = parse_io_limits(self.g.vm.name, reply, QDEV, "")
        assert found is not None, reply
        return found

    async def set(self, limits: IoLimits) -> None:
        async with self.g.vm.qmp() as qmp:
            await qmp.execute("block_set_io_throttle", throttle_args(QDEV, "", limits))

    async def result(self) -> GuestResult:
        return await self.g.vm.result(timeout=600)

    async def paused_for_enospc(self) -> bool:
        async with self.g.vm.qmp() as qmp:
            status = await qmp.execute("query-status")
        return isinstance(status, dict) and status.get("status") == "io-error"


class LibvirtDrive:
    """The libvirt domain's disk ``vda``: ``blkdeviotune`` read and set (live)."""

    def __init__(self, dom: Any, serial: Path) -> None:
        self.dom = dom
        self.serial = serial

    async def limits(self) -> IoLimits:
        params = await anyio.to_thread.run_sync(self.dom.blockIoTune, "vda", 0)
        return limits_from(params)

    async def set(self, limits: IoLimits) -> None:
        await anyio.to_thread.run_sync(self.dom.setBlockIoTune, "vda", params_of(limits),
                                       libvirt.VIR_DOMAIN_AFFECT_LIVE)

    async def paused_for_enospc(self) -> bool:
        state = await anyio.to_thread.run_sync(self.dom.state)
        return bool(state == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR])

    async def result(self) -> GuestResult:
        def text() -> str:
            return self.serial.read_text(errors="replace") if self.serial.exists() else ""
        await until(lambda: find_result(text()) is not None, 600, "the guest's result line",
                    describe=lambda: text()[-300:])
        found = find_result(text())
        assert found is not None
        return found


Drive = QmpDrive | LibvirtDrive
StartGuest = Callable[[Pool, int], Awaitable[Drive]]


async def qmp_guest(p: Pool, host: int) -> Drive:
    g = await p.start_guest(host, "vm1", JOB, start_mib=64, virtual_mib=2048)
    await g.vm.wait_for_qmp_socket()
    return QmpDrive(g)


def libvirt_guest(tmp: Path, uris: dict[int, str]) -> StartGuest:
    async def start(p: Pool, host: int) -> Drive:
        conn = await anyio.to_thread.run_sync(libvirt.open, uris[host])
        p.stack.push_async_callback(anyio.to_thread.run_sync, conn.close)
        _, device = await create_qcow2_disk(p.host_volumes(host), p.stack,
                                            VolumeRef("demo", "vm1-disk"), 64, 2048)
        job = await anyio.to_thread.run_sync(with_expected_md5, JOB)
        serial = tmp / "vm1.serial"
        xml = guest_domain_xml("vm1", p.image, [device], job, serial)
        dom = await anyio.to_thread.run_sync(conn.createXML, xml, 0)

        async def destroy() -> None:
            with anyio.CancelScope(shield=True), contextlib.suppress(libvirt.libvirtError):
                await anyio.to_thread.run_sync(dom.destroy)

        p.stack.push_async_callback(destroy)
        return LibvirtDrive(dom, serial)
    return start


def events(p: Pool, host_id: int) -> list[str]:
    return [str(e.get("event")) for e in p.hosts[host_id].log_events()
            if e.get("vm") == "vm1"]


def stall_throttles(p: Pool, host_id: int) -> int:
    """Limits set because an extension outlived its p99 (the stall's, not a fast guest's
    before it)."""
    return sum(1 for e in p.hosts[host_id].log_events()
               if e.get("event") == THROTTLED and e.get("vm") == "vm1"
               and e.get("reason") in ("SPM failover", "extension overdue"))


async def stall_throttled(p: Pool, host: int, drive: Drive, attempt: int) -> bool:
    """While the SPM is stopped: True once the stall throttles the guest (a limit set and
    written down), False if the guest paused for ENOSPC first (under load a TCG guest can
    fill its headroom before the limit is in place)."""
    asked = [0.0]

    def throttled() -> bool:
        return bool(stall_throttles(p, host) and hold_file(p, host))

    async def settled() -> bool:
        if throttled():
            return True
        if anyio.current_time() - asked[0] < 1.0:  # the hypervisor is asked once a second
            return False
        asked[0] = anyio.current_time()
        return await drive.paused_for_enospc()
    await until(settled, 300, f"the stall to throttle (attempt {attempt})",
                describe=lambda: events(p, host)[-20:])
    return throttled()


async def one_more_extension(p: Pool, host: int) -> None:
    done = events(p, host).count("extended")
    await until(lambda: events(p, host).count("extended") > done, 300,
                "the paused guest's extension after the stall",
                describe=lambda: events(p, host)[-20:])


def hold_file(p: Pool, host_id: int) -> list[Any]:
    path = p.hosts[host_id].directory / "throttle-holds.json"
    if not path.exists():
        return []
    holds = json.loads(path.read_text())["holds"]
    assert isinstance(holds, list)
    return holds


async def killed_while_throttled(p: Pool, start: StartGuest
                                 ) -> tuple[int, Drive, IoLimits, Any]:
    """Throttle the guest through a stopped SPM, then SIGKILL its host; (the host, the
    guest's drive, its own limits as the hypervisor reads them back, the killed run's
    record in the hold file)."""
    spm = await p.wait_for_spm()
    host = next(h for h in p.hosts if h != spm)
    drive = await start(p, host)
    await drive.set(OWN)
    own = await drive.limits()
    assert own.values == OWN.values
    await until(lambda: events(p, host).count("extended") >= 3, 900,
                "three extensions (the guest writes)", describe=lambda: events(p, host))
    process = p.hosts[spm].process
    assert process is not None and process.returncode is None
    for attempt in range(1, STALL_ATTEMPTS + 1):
        process.send_signal(signal.SIGSTOP)
        try:
            if await stall_throttled(p, host, drive, attempt):
                await p.hosts[host].kill()
                break
        finally:
            process.send_signal(signal.SIGCONT)
        # The guest filled its headroom before the throttle's limit was in place (a guest
        # that outruns the throttle's reaction pauses anyway; one paused for space gets no
        # limit): let the SPM serve it, and stall it again once the guest writes on.
        await one_more_extension(p, host)
    else:
        raise AssertionError(f"the guest paused before the throttle acted in all "
                             f"{STALL_ATTEMPTS} stalls: {events(p, host)[-20:]}")
    left = await drive.limits()
    assert left != own and 0 < left.get("bps_wr"), (left, events(p, host)[-20:])
    (rec,) = hold_file(p, host)
    assert rec["vm"] == "vm1" and rec["original"]["values"] == {
        "bps_rd": 900 * MiB, "iops": 200000}
    return host, drive, own, rec


async def struck_out(p: Pool, host: int, rec: Any) -> None:
    """The killed run's record leaves the hold file (written just after the log line that
    says what the restart did with it; a hold of the restarted run may follow it)."""
    await until(lambda: rec not in hold_file(p, host), 60, "the record struck out",
                describe=lambda: hold_file(p, host))


@asynccontextmanager
async def stalled_pool(directory: Path, libvirtd: tuple[LabLibvirtd, LabLibvirtd] | None
                       ) -> AsyncIterator[tuple[Pool, StartGuest]]:
    """The pool, and how its guest starts (QMP, or each host on its lab libvirtd)."""
    directory.mkdir()
    uris: dict[int, str] | None = None
    start: StartGuest = qmp_guest
    if libvirtd is not None:
        uris = {1: libvirtd[0].uri, 2: libvirtd[1].uri}
        start = libvirt_guest(directory, uris)
    # Host 2 never takes the SPM role: the guest runs there, and a role that moved to it
    # under load would serve its extensions through the stall (CI-like load saw the guest
    # finish, its extensions served, while the stopped host was no longer the SPM).
    async with pool(2, directory=directory, chunk_mib=64, libvirt_uris=uris,
                    policy_extra="throttle_floor_mib_s = 1",
                    spm_priorities={2: "never"}) as p:
        yield p, start


async def given_back(directory: Path,
                     libvirtd: tuple[LabLibvirtd, LabLibvirtd] | None = None) -> None:
    async with stalled_pool(directory, libvirtd) as (p, start):
        host, drive, own, rec = await killed_while_throttled(p, start)
        # The SPM serves the dead host's request (the volume grows in the metadata), and the
        # guest, still throttled, fills its host's view and pauses for ENOSPC at its end.
        # (A guest still running at the restart, on a view behind the metadata, is held as
        # a stale view: nothing tells it from one started here on another host's data.)
        await until(drive.paused_for_enospc, 600, "the guest's ENOSPC pause at its view's end")
        await p.hosts[host].start()
        await given_back_and_verified(p, host, drive, own, rec)
        # Its host died with an extension in flight that the SPM served after: the view
        # behind the metadata is this host's own (the guest paused for ENOSPC at its end),
        # so it is refreshed and the guest resumed, never held as a stale view.
        assert not [e for e in events(p, host) if e.startswith(STALE_HOLD)], \
            events(p, host)[-20:]


async def given_back_and_verified(p: Pool, host: int, drive: Drive, own: IoLimits,
                                  rec: Any) -> None:
    """The restarted host gives the drive its own limits back, strikes the killed run's
    record out, and the guest finishes with its data verified."""
    await until(lambda: GIVEN_BACK in events(p, host), 300, "the limits given back",
                describe=lambda: events(p, host)[-20:])
    assert await drive.limits() == own
    await struck_out(p, host, rec)
    result = await drive.result()
    assert result.verified, result


async def named_late(directory: Path) -> None:
    """The restart finds the guest's QMP socket held by another client (QEMU serves one
    at a time): the VM cannot be named, so its record is kept, not dropped as gone, and
    the limits are given back once the socket is let go and the VM connects."""
    async with stalled_pool(directory, None) as (p, start):
        host, drive, own, rec = await killed_while_throttled(p, start)
        await until(drive.paused_for_enospc, 600, "the guest's ENOSPC pause at its view's end")
        left = await drive.limits()
        other = await anyio.connect_unix(p.hosts[host].directory / "qmp" / "vm1.sock")
        try:
            assert b'"QMP"' in await other.receive()  # QEMU serves this client now
            await p.hosts[host].start()
            await until(lambda: any(WAITING in e for e in events(p, host)), 300,
                        "the record kept for a VM not named yet",
                        describe=lambda: events(p, host)[-20:])
            assert await drive.limits() == left and rec in hold_file(p, host)
            metrics = await anyio.to_thread.run_sync(p.hosts[host].scrape)
            assert metrics["autoextend_hypervisor_unidentified_vms"] == 1, metrics
        finally:
            await other.aclose()
        await given_back_and_verified(p, host, drive, own, rec)


async def changed_kept(directory: Path,
                       libvirtd: tuple[LabLibvirtd, LabLibvirtd] | None = None) -> None:
    async with stalled_pool(directory, libvirtd) as (p, start):
        host, drive, own, rec = await killed_while_throttled(p, start)
        operator = IoLimits.of({"bps_wr": 300 * MiB, "iops": 150000})
        await drive.set(operator)
        await p.hosts[host].start()
        await until(lambda: KEPT in events(p, host), 300, "the changed limits kept",
                    describe=lambda: events(p, host)[-20:])
        now = await drive.limits()
        assert now.values == operator.values and now != own, now
        await struck_out(p, host, rec)


@pytest.mark.timeout(900)  # a guest writing under TCG beside other load, a stall
async def test_a_restart_gives_back_the_limits_a_killed_service_left(
        lab_tmp_path: Path) -> None:
    await given_back(lab_tmp_path / "restart")


@pytest.mark.timeout(900)  # the same run
async def test_a_vm_whose_socket_is_held_at_the_restart_gets_its_limits_back_later(
        lab_tmp_path: Path) -> None:
    await named_late(lab_tmp_path / "held")


@pytest.mark.timeout(900)  # the same run
async def test_limits_changed_while_the_service_was_down_are_kept(lab_tmp_path: Path) -> None:
    await changed_kept(lab_tmp_path / "changed")


@pytest.mark.timeout(900)  # the same run, on libvirt
async def test_libvirt_a_restart_gives_back_the_limits_a_killed_service_left(
        lab_tmp_path: Path, libvirtd_pair: tuple[LabLibvirtd, LabLibvirtd]) -> None:
    await given_back(lab_tmp_path / "restart", libvirtd_pair)


@pytest.mark.timeout(900)  # the same run, on libvirt
async def test_libvirt_limits_changed_while_the_service_was_down_are_kept(
        lab_tmp_path: Path, libvirtd_pair: tuple[LabLibvirtd, LabLibvirtd]) -> None:
    await changed_kept(lab_tmp_path / "changed", libvirtd_pair)
