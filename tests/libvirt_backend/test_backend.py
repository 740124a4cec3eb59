"""The LibvirtHypervisor's calls and events against a real libvirtd (a paused domain, no guest
CPU), plus the paths that need no daemon: libvirtd unreachable, a foreign event loop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from structlog.testing import capture_logs

from autoextend.clock import MonotonicClock
from autoextend.lab.guest import GuestJob
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd, start_libvirtd
from autoextend.lab.waiting import until
from autoextend.libvirt_backend.errors import (
    EventLoopMismatch,
    LibvirtCallFailed,
    LibvirtDisconnected,
    VmNotFound,
)
from autoextend.libvirt_backend.eventloop import ensure_event_impl
from autoextend.libvirt_backend.hypervisor import LibvirtHypervisor
from autoextend.monitor.protocols import (
    HypervisorEvent,
    PauseReason,
    RunState,
    VmAppeared,
    VmGone,
    VmPaused,
    VmResumed,
)
from autoextend.volumes import VolumeRef

from .harness import VG, MiB, fast_settings, lab_domains

GiB = 1 << 30


async def next_for(receive: MemoryObjectReceiveStream[HypervisorEvent], vm: str,
                   kind: type[HypervisorEvent], timeout: float = 30.0) -> HypervisorEvent:
    """The next event of ``kind`` for ``vm`` (others, e.g. other tests' domains, skipped)."""
    with anyio.fail_after(timeout):
        async for event in receive:
            if event.vm == vm and isinstance(event, kind):
                return event
    raise AssertionError("stream closed")


async def test_unreachable_libvirtd_starts_and_keeps_trying(tmp_path: Path) -> None:
    uri = f"qemu:///system?socket={tmp_path / 'absent-sock'}"
    hypervisor = LibvirtHypervisor(fast_settings(uri), lambda path: None, MonotonicClock())
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](16)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(15):
                await tg.start(hypervisor.run, send)
            assert not hypervisor.connected
            with pytest.raises(LibvirtDisconnected, match="vm1: domainListGetStats"):
                await hypervisor.drives("vm1")
            with pytest.raises(LibvirtDisconnected):
                await hypervisor.resume("vm1")
            await anyio.sleep(0.6)  # a few reconnect attempts
            tg.cancel_scope.cancel()
    failures = [e for e in logs if e["event"] == "libvirt connect failed"]
    assert len(failures) >= 2
    assert failures[0]["log_level"] == "warning"
    assert all(e["log_level"] == "debug" for e in failures[1:])  # not a warning per retry
    assert hypervisor.connects == 0


async def test_event_impl_is_bound_to_one_loop() -> None:
    loop = ensure_event_impl()
    assert ensure_event_impl() is loop  # idempotent

    async def elsewhere() -> None:
        ensure_event_impl()

    with pytest.raises(EventLoopMismatch, match="another asyncio loop"):
        await anyio.to_thread.run_sync(asyncio.run, elsewhere())


@pytest.mark.slow
async def test_calls_and_events_on_a_real_domain(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with lab_domains(libvirtd.uri, lab_tmp_path, lab_guest) as rig:
        hypervisor = rig.hypervisor
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](256)
        async with anyio.create_task_group() as tg:
            await tg.start(hypervisor.run, send)
            assert hypervisor.connected and hypervisor.connects == 1

            dom = await rig.start("lv-calls", GuestJob(mib=8), start_mib=32, virtual_mib=1024,
                                  paused=True)
            await next_for(receive, "lv-calls", VmAppeared)
            assert "lv-calls" in hypervisor.vms()

            (drive,) = await hypervisor.drives("lv-calls")
            assert drive.vm == "lv-calls"
            assert drive.drive == drive.node and drive.drive.startswith("vda[")
            assert drive.path == dom.device
            assert drive.capacity == GiB
            assert drive.physical == 32 * MiB
            assert 0 <= drive.allocation < drive.physical
            assert drive.threshold == 0
            assert hypervisor.volume_of(drive) == VolumeRef(VG, "lv-calls-disk")

            await hypervisor.set_threshold("lv-calls", drive, 16 * MiB)
            (armed,) = await hypervisor.drives("lv-calls")
            assert armed.threshold == 16 * MiB
            await hypervisor.set_threshold("lv-calls", drive, 0)
            assert (await hypervisor.drives("lv-calls"))[0].threshold == 0

            state = await hypervisor.run_state("lv-calls")
            assert not state.running and state.pause_reason is not PauseReason.ENOSPC

            await hypervisor.resume("lv-calls")
            await next_for(receive, "lv-calls", VmResumed)
            assert await hypervisor.run_state("lv-calls") == RunState(True)
            with pytest.raises(LibvirtCallFailed, match="lv-calls: resume"):
                await hypervisor.resume("lv-calls")  # not paused

            handle = await rig.dom("lv-calls")
            await rig.call(handle.suspend)
            paused = await next_for(receive, "lv-calls", VmPaused)
            assert paused == VmPaused("lv-calls", PauseReason.USER)
            assert await hypervisor.run_state("lv-calls") == RunState(False, PauseReason.USER)

            await rig.call(handle.destroy)
            await next_for(receive, "lv-calls", VmGone)
            assert "lv-calls" not in hypervisor.vms()
            for call in (hypervisor.drives("lv-calls"), hypervisor.run_state("lv-calls"),
                         hypervisor.resume("lv-calls")):
                with pytest.raises(VmNotFound, match="lv-calls"):
                    await call
            with pytest.raises(VmNotFound, match="nosuch: setBlockThreshold"):
                await hypervisor.set_threshold("nosuch", drive, 1)

            # The same name again is another domain (a new UUID): the handle cached for
            # the old one is refused by libvirtd, and the call goes to the new one.
            for _ in range(2):  # the second time, a handle for the first is cached
                await rig.start("lv-calls", GuestJob(mib=8), paused=True, reuse=dom)
                await next_for(receive, "lv-calls", VmAppeared)
                await hypervisor.set_threshold("lv-calls", drive, 4 * MiB)
                await rig.call((await rig.dom("lv-calls")).destroy)
                await next_for(receive, "lv-calls", VmGone)
            await rig.start("lv-calls", GuestJob(mib=8), paused=True, reuse=dom)
            await hypervisor.set_threshold("lv-calls", drive, 8 * MiB)
            assert (await hypervisor.drives("lv-calls"))[0].threshold == 8 * MiB
            assert await hypervisor.outgoing_migration("lv-calls") is False
            tg.cancel_scope.cancel()


@pytest.mark.slow
async def test_full_stream_becomes_a_resync(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    """With no room in the monitor's stream, the announcement is not lost and the callback
    never blocks: it is delivered later by the resync task."""
    async with lab_domains(libvirtd.uri, lab_tmp_path, lab_guest) as rig:
        await rig.start("lv-full", GuestJob(mib=8), start_mib=32, virtual_mib=1024,
                        paused=True)
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](0)
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                await tg.start(rig.hypervisor.run, send)  # nobody is receiving yet
                assert any(e["event"] == "event stream full, resync pending"
                           and e.get("vm") == "lv-full" for e in logs)
                event = await next_for(receive, "lv-full", VmAppeared)
                assert event == VmAppeared("lv-full")
                tg.cancel_scope.cancel()


@pytest.mark.slow
async def test_hung_libvirtd_is_dropped_by_keepalive_and_reconnected(lab_tmp_path: Path) -> None:
    """A libvirtd that stops answering (SIGSTOP) is declared dead by keepalive; calls fail
    fast meanwhile; once it answers again the backend reconnects."""
    daemon = await start_libvirtd(lab_tmp_path / "lvd")
    pid = int((daemon.root / "libvirtd.pid").read_text().strip())
    try:
        settings = fast_settings(daemon.uri, keepalive_interval_s=1, keepalive_count=2,
                                 call_timeout_s=2.0)
        hypervisor = LibvirtHypervisor(settings, lambda path: None, MonotonicClock())
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](64)
        async with anyio.create_task_group() as tg:
            await tg.start(hypervisor.run, send)
            assert hypervisor.connected
            os.kill(pid, signal.SIGSTOP)
            try:
                await until(lambda: not hypervisor.connected, 20, "the hung libvirtd noticed")
                with anyio.fail_after(1):
                    with pytest.raises(LibvirtDisconnected):
                        await hypervisor.drives("any")
            finally:
                os.kill(pid, signal.SIGCONT)
            await until(lambda: hypervisor.connects >= 2, 30, "a reconnect",
                        describe=lambda: hypervisor.connects)
            assert hypervisor.connected
            tg.cancel_scope.cancel()
    finally:
        await daemon.stop()
