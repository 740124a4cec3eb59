"""One contract for every Hypervisor: the in-memory fake, QMP against guestless QEMU and
libvirt against the lab libvirtd. Each case starts its own paused VM with one thin qcow2
drive (``PHYSICAL`` bytes on a ``CAPACITY`` virtual disk) and checks what the monitor relies
on: discovery, the drive's numbers, a one-shot threshold that fires, growth seen at once,
pause and resume reported as events and as state, and neutral errors (``VmNotFound`` for a VM
that is not there, a plain ``HypervisorError`` for a bad call on one that is)."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest

from autoextend.errors import HypervisorError
from autoextend.monitor.migration import NOT_MIGRATING
from autoextend.monitor.protocols import (
    HypervisorHealth,
    IoLimits,
    PauseReason,
    RunState,
    ThresholdCrossed,
    VmGone,
    VmNotFound,
    VmPaused,
    VmResumed,
)
from tests.conformance.hypervisor_subjects import CAPACITY, PHYSICAL, Driver, MiB, serving

Factory = Callable[[], Driver]


async def test_a_new_vm_is_announced_with_its_drive(hypervisor_driver: Factory) -> None:
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        expected = await driver.add_vm(vm)
        (drive,) = await hv.drives(vm)
        assert (drive.vm, drive.path) == (vm, expected.path)
        assert drive.drive and drive.node
        assert (drive.capacity, drive.physical, drive.threshold) == (CAPACITY, PHYSICAL, 0)
        assert 0 <= drive.allocation < PHYSICAL
        assert hv.volume_of(drive) == expected.volume
        assert hv.volume_of(dataclasses.replace(drive, path="/nonexistent/disk")) is None


async def test_a_threshold_is_armed_fires_once_and_is_cleared(
    hypervisor_driver: Factory,
) -> None:
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        (drive,) = await hv.drives(vm)
        await hv.set_threshold(vm, drive, 1 * MiB)
        (armed,) = await hv.drives(vm)
        assert armed.threshold == 1 * MiB

        await driver.write(vm, 2 * MiB)
        crossed = await driver.next_event(vm, ThresholdCrossed)
        assert isinstance(crossed, ThresholdCrossed)
        assert (crossed.drive, crossed.threshold) == (drive.drive, 1 * MiB)
        assert crossed.excess > 0
        (after,) = await hv.drives(vm)
        assert after.threshold == 0  # one-shot: the hypervisor disarmed it
        assert after.allocation >= 2 * MiB


async def test_volume_growth_is_seen_at_once(hypervisor_driver: Factory) -> None:
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        await driver.grow(vm, PHYSICAL + 64 * MiB)
        (drive,) = await hv.drives(vm)
        assert (drive.physical, drive.capacity) == (PHYSICAL + 64 * MiB, CAPACITY)


async def test_pause_and_resume_are_events_and_state(hypervisor_driver: Factory) -> None:
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        started = await hv.run_state(vm)
        assert not started.running
        assert started.pause_reason in (PauseReason.USER, PauseReason.OTHER)

        await hv.resume(vm)
        assert await driver.next_event(vm, VmResumed) == VmResumed(vm)
        assert await hv.run_state(vm) == RunState(True)

        await driver.operator_pause(vm)
        assert await driver.next_event(vm, VmPaused) == VmPaused(vm, PauseReason.USER)
        assert await hv.run_state(vm) == RunState(False, PauseReason.USER)


async def test_suspend_pauses_a_running_vm_and_a_paused_one_stays(
    hypervisor_driver: Factory,
) -> None:
    """``suspend`` (the view check pauses a guest that ran on a stale view): an operator-like
    pause, seen as an event and as state; suspending a paused VM is no error."""
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        await hv.resume(vm)
        assert await driver.next_event(vm, VmResumed) == VmResumed(vm)
        await hv.suspend(vm)
        assert await driver.next_event(vm, VmPaused) == VmPaused(vm, PauseReason.USER)
        assert await hv.run_state(vm) == RunState(False, PauseReason.USER)
        await hv.suspend(vm)
        assert await hv.run_state(vm) == RunState(False, PauseReason.USER)


async def test_a_killed_vm_is_gone_and_then_not_found(hypervisor_driver: Factory) -> None:
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        (drive,) = await hv.drives(vm)
        await hv.kill(vm)
        assert await driver.next_event(vm, VmGone) == VmGone(vm)
        with pytest.raises(VmNotFound) as info:
            await hv.drives(vm)
        assert info.value.vm == vm
        with pytest.raises(VmNotFound):
            await hv.set_threshold(vm, drive, 4 * MiB)


async def test_every_call_on_an_unknown_vm_raises_the_neutral_vm_not_found(
    hypervisor_driver: Factory,
) -> None:
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        (drive,) = await hv.drives(vm)
        other = f"{vm}-absent"
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "drives": lambda: hv.drives(other),
            "set_threshold": lambda: hv.set_threshold(other, drive, 4 * MiB),
            "run_state": lambda: hv.run_state(other),
            "resume": lambda: hv.resume(other),
            "kill": lambda: hv.kill(other),
            "suspend": lambda: hv.suspend(other),
        }
        for call, make in calls.items():
            with pytest.raises(VmNotFound) as info:
                await make()
            assert info.value.vm == other, call
            assert isinstance(info.value, HypervisorError)
        assert len(await hv.drives(vm)) == 1  # the known VM is unaffected


async def test_a_bad_call_on_a_known_vm_is_a_hypervisor_error(
    hypervisor_driver: Factory,
) -> None:
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        (drive,) = await hv.drives(vm)
        bogus = dataclasses.replace(drive, drive="zz9", node="zz9")
        with pytest.raises(HypervisorError) as info:
            await hv.set_threshold(vm, bogus, 4 * MiB)
        assert not isinstance(info.value, VmNotFound)
        (still,) = await hv.drives(vm)
        assert still.threshold == 0


async def test_health_and_migration_are_on_the_protocol(hypervisor_driver: Factory) -> None:
    """Every backend reports health and a VM's migration (``Hypervisor.health`` and
    ``Hypervisor.migration``: no capability probe)."""
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        assert hv.health() == HypervisorHealth(0, 0, None)
        assert await hv.migration(vm) == NOT_MIGRATING
        with pytest.raises(VmNotFound):
            await hv.migration(driver.name())


async def test_io_limits_read_back_and_restore_exactly(hypervisor_driver: Factory) -> None:
    """What the write throttle relies on (``monitor/throttle.py``): a drive's limits can be
    read, a write limit set on top of them, and the limits read before given back exactly."""
    async with serving(hypervisor_driver()) as driver:
        hv, vm = driver.hypervisor, driver.name()
        await driver.add_vm(vm)
        (drive,) = await hv.drives(vm)
        assert (await hv.io_limits(vm, drive)).unlimited  # a new VM has none
        theirs = IoLimits.of({"iops": 500, "bps_rd": 300 * MiB})
        await hv.set_io_limits(vm, drive, theirs)
        read = await hv.io_limits(vm, drive)
        assert read.values == theirs.values
        throttled = read.with_write_bps(12 * MiB)
        await hv.set_io_limits(vm, drive, throttled)
        now = await hv.io_limits(vm, drive)
        assert (now.write_bps, now.get("iops"), now.get("bps_rd")) == (12 * MiB, 500, 300 * MiB)
        await hv.set_io_limits(vm, drive, read)
        assert await hv.io_limits(vm, drive) == read  # exactly, group included
        await hv.set_io_limits(vm, drive, IoLimits())
        assert (await hv.io_limits(vm, drive)).unlimited
        with pytest.raises(VmNotFound):
            await hv.io_limits(f"{vm}-absent", drive)
        with pytest.raises(HypervisorError):
            await hv.set_io_limits(vm, dataclasses.replace(drive, drive="zz9", node="zz9"),
                                   theirs)
