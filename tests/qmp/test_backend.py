"""QmpHypervisor against real QEMU 7.2 processes (q35, no guest, -S) on loop devices."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from qmp_testlab import DriveSpec, Lookup, MiB, drained, fast_settings, qemu_lab, running, wait_for

from autoextend.clock import MonotonicClock
from autoextend.monitor.protocols import (
    DrivesChanged,
    HypervisorEvent,
    PauseReason,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
    VmPaused,
    VmResumed,
)
from autoextend.qmp.errors import QmpCommandFailed, QmpTimeout, VmNotFound
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.volumes import VolumeRef

pytestmark = pytest.mark.slow  # starts QEMU (make unit runs none)


async def test_discovery_names_and_drives() -> None:
    async with qemu_lab() as lab:
        rw, raw, ro = await lab.volume(), await lab.volume(fmt="raw"), await lab.volume()
        await lab.start("named", [DriveSpec(rw, "vda"), DriveSpec(raw, "vdb", fmt="raw"),
                                  DriveSpec(ro, "vdc", read_only=True)])
        other = await lab.volume()
        await lab.start("anon", [DriveSpec(other, "vda")], with_name=False)
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            # both announced before started() returned
            appeared = {e.vm for e in drained(events) if isinstance(e, VmAppeared)}
            assert appeared == {"named", "anon"}
            assert set(hv.vms()) == {"named", "anon"}

            [vda] = await hv.drives("named")
            assert (vda.vm, vda.drive, vda.node, vda.path) == ("named", "vda", "prot0", rw.device)
            assert (vda.capacity, vda.physical, vda.allocation, vda.threshold) == (
                1 << 30, 64 * MiB, 0, 0)
            assert hv.volume_of(vda) == VolumeRef("vg", os.path.basename(rw.device))
            [anon] = await hv.drives("anon")
            assert anon.path == other.device

            with pytest.raises(VmNotFound) as info:
                await hv.drives("nope")
            assert info.value.vm == "nope"


async def test_threshold_fires_on_protocol_node_and_physical_follows_growth() -> None:
    async with qemu_lab() as lab:
        vol = await lab.volume()
        qemu = await lab.start("vm1", [DriveSpec(vol, "vda")])
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            [vda] = await hv.drives("vm1")
            await hv.set_threshold("vm1", vda, 1 * MiB)
            [vda] = await hv.drives("vm1")
            assert vda.threshold == 1 * MiB

            await lab.qemu_io(qemu, "fmt0", "write -P 0x5a 0 2M")
            crossed = await wait_for(events, lambda e: isinstance(e, ThresholdCrossed))
            assert isinstance(crossed, ThresholdCrossed)
            assert crossed == ThresholdCrossed("vm1", "vda", 1 * MiB, crossed.excess)
            assert crossed.excess > 1 * MiB  # 2 MiB of data plus qcow2 metadata, physical

            [vda] = await hv.drives("vm1")
            assert vda.threshold == 0  # one-shot
            assert vda.allocation >= 2 * MiB

            # QEMU caches the host_device length; the backend reads the device itself
            await lab.grow(vol, 192 * MiB)
            [vda] = await hv.drives("vm1")
            assert vda.physical == 192 * MiB

            with pytest.raises(QmpCommandFailed) as info:
                await hv.set_threshold("vm1", type(vda)(**{**vda.__dict__, "node": "zz"}), 1)
            assert (info.value.vm, info.value.command) == ("vm1", "block-set-write-threshold")


async def test_stop_and_cont_are_classified() -> None:
    async with qemu_lab() as lab:
        qemu = await lab.start("vm1", [DriveSpec(await lab.volume(), "vda")])
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            state = await hv.run_state("vm1")
            assert not state.running and state.pause_reason is PauseReason.OTHER  # prelaunch

            await hv.resume("vm1")
            assert await wait_for(events, lambda e: isinstance(e, VmResumed)) == VmResumed("vm1")
            assert (await hv.run_state("vm1")).running

            await lab.control(qemu, "stop")
            paused = await wait_for(events, lambda e: isinstance(e, VmPaused))
            assert paused == VmPaused("vm1", PauseReason.USER)
            assert (await hv.run_state("vm1")).pause_reason is PauseReason.USER


async def test_killed_qemu_is_gone_and_picked_up_again_when_restarted() -> None:
    async with qemu_lab() as lab:
        vol = await lab.volume()
        qemu = await lab.start("vm1", [DriveSpec(vol, "vda")])
        keep = await lab.start("vm2", [DriveSpec(await lab.volume(), "vda")])
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            await lab.kill(qemu)  # SIGKILL: the socket file stays behind, refusing
            assert await wait_for(events, lambda e: isinstance(e, VmGone)) == VmGone("vm1")
            with pytest.raises(VmNotFound):
                await hv.drives("vm1")
            assert len(await hv.drives("vm2")) == 1  # the other VM is unaffected
            await anyio.sleep(1.0)  # several refused reconnects

            await lab.launch(qemu)  # same socket path
            assert await wait_for(events, lambda e: isinstance(e, VmAppeared)) == VmAppeared("vm1")
            [vda] = await hv.drives("vm1")
            assert vda.path == vol.device

            await lab.kill(qemu, signal.SIGTERM)  # clean exit removes the socket
            assert await wait_for(events, lambda e: isinstance(e, VmGone)) == VmGone("vm1")
            await anyio.sleep(0.5)  # time is the subject: no reconnect to a clean exit
            assert set(hv.vms()) == {"vm2"}
            assert not any(isinstance(e, VmAppeared) for e in drained(events))
            await lab.kill(keep, signal.SIGTERM)


async def test_hung_socket_and_hung_qemu_do_not_stall_others() -> None:
    async with qemu_lab() as lab:
        # A socket that accepts connections but never sends a QMP greeting.
        listener = await anyio.create_unix_listener(lab.qmp_dir / "hung.sock")
        accepted: list[Any] = []

        async def hold(stream: Any) -> None:
            async with stream:
                accepted.append(stream)
                await anyio.sleep_forever()

        async with listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, hold)
            good = await lab.start("good", [DriveSpec(await lab.volume(), "vda")])
            stuck = await lab.start("stuck", [DriveSpec(await lab.volume(), "vda")])
            hv = QmpHypervisor(
                fast_settings(lab, connect_timeout_s=30.0, command_timeout_s=1.0),
                Lookup(lab), MonotonicClock(),
            )
            send, events = anyio.create_memory_object_stream[HypervisorEvent](100)
            with send, events:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(hv.run, send)  # started() would wait for the hung socket
                    seen: set[str] = set()
                    with anyio.fail_after(15):  # far less than the 30 s greeting timeout
                        while seen != {"good", "stuck"}:
                            event = await events.receive()
                            if isinstance(event, VmAppeared):
                                seen.add(event.vm)
                    assert accepted, "the hung socket was connected to"
                    assert "hung" not in hv.vms()

                    os.kill(stuck.pid, signal.SIGSTOP)  # QEMU alive but not answering
                    try:
                        with pytest.raises(QmpTimeout) as info:
                            await hv.drives("stuck")
                        assert (info.value.vm, info.value.command) == ("stuck", "query-block")
                        assert len(await hv.drives("good")) == 1
                        await lab.control(good, "cont")
                        await wait_for(events, lambda e: e == VmResumed("good"))
                    finally:
                        os.kill(stuck.pid, signal.SIGCONT)
                    assert len(await hv.drives("stuck")) == 1
                    tg.cancel_scope.cancel()
            server.cancel_scope.cancel()


async def test_scsi_hotplug_and_unplug_send_drives_changed() -> None:
    async with qemu_lab() as lab:
        qemu = await lab.start("vm1", [DriveSpec(await lab.volume(), "vda")], scsi=True)
        hot = await lab.volume()
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            assert [d.drive for d in await hv.drives("vm1")] == ["vda"]
            await lab.control(qemu, "blockdev-add", {"driver": "host_device", "node-name": "p9",
                                                     "filename": hot.device})
            await lab.control(qemu, "blockdev-add", {"driver": "qcow2", "node-name": "f9",
                                                     "file": "p9"})
            await lab.control(qemu, "device_add", {"driver": "scsi-hd", "id": "sdb",
                                                   "drive": "f9", "bus": "scsi0.0"})
            assert await wait_for(events, lambda e: isinstance(e, DrivesChanged)) == (
                DrivesChanged("vm1"))
            drives = {d.drive: d for d in await hv.drives("vm1")}
            assert set(drives) == {"vda", "sdb"}
            assert (drives["sdb"].node, drives["sdb"].path) == ("p9", hot.device)

            await lab.control(qemu, "device_del", {"id": "sdb"})  # SCSI unplugs at once
            await wait_for(events, lambda e: isinstance(e, DrivesChanged))
            assert [d.drive for d in await hv.drives("vm1")] == ["vda"]


async def test_twenty_instances_and_one_failing() -> None:
    async with qemu_lab() as lab:
        qemus = []
        for i in range(20):
            qemus.append(await lab.start(f"vm{i:02}", [DriveSpec(await lab.volume(), "vda")]))
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            assert {e.vm for e in drained(events) if isinstance(e, VmAppeared)} == {
                q.name for q in qemus}
            for q in qemus:
                [vda] = await hv.drives(q.name)
                await hv.set_threshold(q.name, vda, 1 * MiB)
            await lab.kill(qemus[7])
            assert await wait_for(events, lambda e: isinstance(e, VmGone)) == VmGone("vm07")
            for q in qemus[8:12]:
                await lab.qemu_io(q, "fmt0", "write 0 2M")
            crossed: set[str] = set()
            with anyio.fail_after(20):
                while len(crossed) < 4:
                    event = await events.receive()
                    if isinstance(event, ThresholdCrossed):
                        crossed.add(event.vm)
            assert crossed == {"vm08", "vm09", "vm10", "vm11"}
            for q in qemus:
                if q.name != "vm07":
                    [vda] = await hv.drives(q.name)
                    assert vda.threshold == (0 if q.name in crossed else 1 * MiB)


async def test_duplicate_vm_names_fall_back_to_the_socket_stem() -> None:
    async with qemu_lab() as lab:
        common = ["-machine", "none", "-nodefaults", "-display", "none", "-S", "-name", "dup"]
        await lab.start_custom("first", common)
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            assert drained(events) == [VmAppeared("dup")]
            await lab.start_custom("second", common)
            assert await wait_for(events, lambda e: isinstance(e, VmAppeared)) == (
                VmAppeared("second"))
            assert hv.vms() == {"dup": str(lab.qmp_dir / "first.sock"),
                                "second": str(lab.qmp_dir / "second.sock")}
            assert await hv.drives("second") == []  # -machine none: no block backends


class CuttableProxy:
    """A unix-socket relay in front of a real QEMU monitor; ``cut()`` drops every connection
    through it (as when QEMU closes a monitor connection) while QEMU itself keeps running."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.connections = 0
        self._scopes: set[anyio.CancelScope] = set()

    async def handle(self, client: anyio.abc.ByteStream) -> None:
        self.connections += 1
        async with client, await anyio.connect_unix(self.target) as upstream:
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                async with anyio.create_task_group() as pumps:
                    pumps.start_soon(self._pump, client, upstream, pumps.cancel_scope)
                    pumps.start_soon(self._pump, upstream, client, pumps.cancel_scope)
            self._scopes.discard(scope)

    @staticmethod
    async def _pump(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream,
                    both: anyio.CancelScope) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        both.cancel()  # one side ended: end the relay

    def cut(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()


async def test_connection_dropped_while_qemu_lives_is_reconnected() -> None:
    """QEMU stays up but its monitor connection drops (QEMU 7.2 did this to both its monitors
    right after an active commit failed with ENOSPC, beside a CPU hog): the VM is gone, then
    back on the next connect, with QEMU's state intact and its events flowing again."""
    async with qemu_lab() as lab:
        qemu = await lab.start("vm1", [DriveSpec(await lab.volume(), "vda")])
        real = lab.root / "vm1-real.sock"
        qemu.socket.rename(real)  # out of the glob; the relay takes its place
        proxy = CuttableProxy(real)
        listener = await anyio.create_unix_listener(qemu.socket)
        async with listener, anyio.create_task_group() as server:
            server.start_soon(listener.serve, proxy.handle)
            hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
            async with running(hv) as events:
                assert drained(events) == [VmAppeared("vm1")]
                [vda] = await hv.drives("vm1")
                await hv.set_threshold("vm1", vda, 1 * MiB)

                proxy.cut()
                assert await wait_for(events, lambda e: isinstance(e, VmGone)) == (
                    VmGone("vm1"))
                assert await wait_for(events, lambda e: isinstance(e, VmAppeared)) == (
                    VmAppeared("vm1"))
                assert proxy.connections == 2
                assert qemu.process is not None and qemu.process.returncode is None
                [vda] = await hv.drives("vm1")
                assert vda.threshold == 1 * MiB  # QEMU kept it while we were away

                await lab.qemu_io(qemu, "fmt0", "write 0 2M")
                crossed = await wait_for(events, lambda e: isinstance(e, ThresholdCrossed))
                assert isinstance(crossed, ThresholdCrossed) and crossed.vm == "vm1"
                assert hv.session_failures == 0  # QEMU's side ended it, not a bad reply
            server.cancel_scope.cancel()


async def test_error_policy_from_the_device_and_from_a_legacy_drive() -> None:
    """Issue 29 item 5 over QMP: ``werror`` of a ``-device`` (qom-get), of a legacy
    ``-drive`` (the device says ``auto``; read from QEMU's command line), and unset."""
    async with qemu_lab() as lab:
        a, b, c = await lab.volume(), await lab.volume(), await lab.volume()
        await lab.start_custom("pol", [
            "-machine", "q35", "-accel", "tcg", "-m", "32", "-nodefaults", "-display", "none",
            "-S", "-name", "pol",
            "-blockdev", f"driver=host_device,filename={a.device},node-name=p0,cache.direct=on",
            "-blockdev", "driver=qcow2,file=p0,node-name=f0",
            "-device", "virtio-blk-pci,drive=f0,id=vda,werror=report",
            "-drive", f"file={b.device},format=qcow2,if=none,id=d1,werror=ignore,"
                      "cache.direct=on",
            "-device", "virtio-blk-pci,drive=d1,id=vdb",
            "-blockdev", f"driver=host_device,filename={c.device},node-name=p2,cache.direct=on",
            "-blockdev", "driver=qcow2,file=p2,node-name=f2",
            "-device", "virtio-blk-pci,drive=f2,id=vdc",
        ])
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv):
            drives = {d.drive: d.error_policy for d in await hv.drives("pol")}
            again = {d.drive: d.error_policy for d in await hv.drives("pol")}  # cached
    # unset anywhere: "" (QEMU's default, enospc: the VM pauses), as over libvirt
    assert drives == again == {"vda": "report", "vdb": "ignore", "vdc": ""}
