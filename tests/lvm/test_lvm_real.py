"""Real lvm2 on loop-device PVs (activation off): reports, extend semantics, errors, the
SPM-only writer, and that host-side operations leave the VG untouched."""

from __future__ import annotations

import fcntl
import os

import anyio
import pytest

from autoextend.errors import NotSpmError
from autoextend.lvm.errors import (
    DeviceMapperUnavailable,
    InsufficientFreeExtents,
    LvmLockError,
    MissingPvError,
    NoSuchLogicalVolume,
    NoSuchVolumeGroup,
    VolumeNotFound,
)
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import ProcessRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.service import LvmViewSizes
from autoextend.volumes import LocalAuthority, NoAuthority, VolumeRef

from .support import EXTENT, MiB, Pool, RecordingRunner, needs_dm

pytestmark = pytest.mark.slow  # lvm2 on loop devices (make unit runs none)


async def test_vg_over_several_pvs(pool: Pool) -> None:
    vg = await pool.reader.vg(pool.vg)
    assert vg.pv_count == 3
    assert vg.extent_size == EXTENT
    assert vg.free_extents == vg.extent_count > 150
    pvs = await pool.reader.pvs(pool.vg)
    assert sorted(pv.name for pv in pvs) == sorted(pool.devices)
    assert all(pv.vg == pool.vg and not pv.missing for pv in pvs)
    assert (await pool.reader.vgs(pool.vg)) == (vg,)


async def test_lvs_with_tags(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "disk-1")
    lv = await pool.writer.create_lv(ref, 10 * MiB + 1, tags=("vm_a", "img.1"))
    assert (lv.name, lv.size, lv.extent_count) == ("disk-1", 12 * MiB, 3)
    assert set(lv.tags) == {"vm_a", "img.1"}
    assert lv.active is None  # activation disabled: lvm2 cannot tell
    lv = await pool.writer.change_tags(ref, add=("t3",), remove=("vm_a",))
    assert set(lv.tags) == {"img.1", "t3"}
    assert [x.name for x in await pool.reader.lvs(pool.vg)] == ["disk-1"]
    await pool.writer.remove_lv(ref)
    with pytest.raises(NoSuchLogicalVolume):
        await pool.reader.lv(ref)


async def test_extend_rounds_up_and_never_shrinks(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "lv1")
    await pool.writer.create_lv(ref, 8 * MiB)
    result = await pool.writer.extend(ref, 20 * MiB + 5)
    assert (result.size, result.changed) == (24 * MiB, True)
    assert result.previous == 8 * MiB  # from lvextend's own report (the SPM's journal)
    assert (await pool.reader.lv(ref)).size == 24 * MiB
    seqno = (await pool.reader.vg(pool.vg)).seqno
    again = await pool.writer.extend(ref, 24 * MiB)
    smaller = await pool.writer.extend(ref, 4 * MiB)
    assert (again.size, again.changed) == (24 * MiB, False)
    assert (smaller.size, smaller.changed) == (24 * MiB, False)
    assert (await pool.reader.lv(ref)).size == 24 * MiB
    assert (await pool.reader.vg(pool.vg)).seqno == seqno  # the no-ops wrote nothing


async def test_concurrent_extends_end_at_the_maximum(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "busy")
    await pool.writer.create_lv(ref, 4 * MiB)
    # Two writers (separate in-process locks) so that lvm2's own VG lock arbitrates and some
    # extends find that another got there first.
    other = LvmWriter(ProcessRunner(), pool.config, LocalAuthority())
    sizes = [(index * 7 % 10 + 2) * 4 * MiB for index in range(10)]
    results = []

    async def extend(writer: LvmWriter, size: int) -> None:
        results.append((size, await writer.extend(ref, size)))

    async with anyio.create_task_group() as tg:
        for index, size in enumerate(sizes):
            tg.start_soon(extend, pool.writer if index % 2 else other, size)
    assert (await pool.reader.lv(ref)).size == max(sizes)
    for size, result in results:
        assert result.size >= size
    assert any(result.changed for _, result in results)


async def test_full_vg_is_a_clear_error(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "big")
    await pool.writer.create_lv(ref, 4 * MiB)
    vg = await pool.reader.vg(pool.vg)
    with pytest.raises(InsufficientFreeExtents) as info:
        await pool.writer.extend(ref, vg.size + EXTENT)
    assert "Insufficient free space" in info.value.stderr
    assert info.value.argv[0] == "lvextend"
    assert "not enough free extents" in str(info.value)
    assert (await pool.reader.lv(ref)).size == 4 * MiB


async def test_missing_vg_and_lv_are_clear_errors(pool: Pool) -> None:
    with pytest.raises(NoSuchLogicalVolume):
        await pool.writer.extend(VolumeRef(pool.vg, "nope"), 8 * MiB)
    with pytest.raises(NoSuchVolumeGroup) as info:
        await pool.reader.vg("no_such_vg")
    assert isinstance(info.value, VolumeNotFound)
    assert "no_such_vg" in str(info.value)


async def test_missing_pv_is_a_clear_error(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "lv1")
    await pool.writer.create_lv(ref, 8 * MiB)
    from autoextend.lvm import loopdev

    await loopdev.detach(pool.devices[2])
    pvs = await pool.reader.pvs(pool.vg)
    assert sum(pv.missing for pv in pvs) == 1
    with pytest.raises(MissingPvError) as info:
        await pool.writer.extend(ref, 16 * MiB)
    assert "missing" in str(info.value).lower()


async def test_lock_contention_is_a_clear_error(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "lv1")
    await pool.writer.create_lv(ref, 8 * MiB)
    no_wait = LvmCommandConfig(pool.config.devices, wait_for_locks=False)
    writer = LvmWriter(ProcessRunner(), no_wait, LocalAuthority())
    lock_fd = os.open(f"/run/lock/lvm/V_{pool.vg}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        with pytest.raises(LvmLockError):
            await writer.extend(ref, 16 * MiB)
        # --readonly reports take no lock: the host side is never blocked by the SPM.
        assert (await pool.reader.lv(ref)).size == 8 * MiB
    finally:
        os.close(lock_fd)
        os.unlink(f"/run/lock/lvm/V_{pool.vg}")


async def test_host_side_operations_leave_the_vg_untouched(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "lv1")
    await pool.writer.create_lv(ref, 8 * MiB)
    before = await pool.reader.vg(pool.vg)
    runner = RecordingRunner(ProcessRunner())
    reader = LvmReader(runner, pool.config)
    await reader.pvs()
    await reader.vgs()
    await reader.lvs(pool.vg)
    await reader.lv(ref)
    with pytest.raises(DeviceMapperUnavailable):
        await reader.refresh(ref)  # activation is off here: refused, nothing run
    assert all("--readonly" in command for command in runner.commands)
    assert not any(hasattr(reader, name) for name in ("extend", "create_lv", "remove_lv"))
    assert (await pool.reader.vg(pool.vg)).seqno == before.seqno


async def test_writer_refuses_without_spm_authority(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "lv1")
    await pool.writer.create_lv(ref, 8 * MiB)
    seqno = (await pool.reader.vg(pool.vg)).seqno
    runner = RecordingRunner(ProcessRunner())
    writer = LvmWriter(runner, pool.config, NoAuthority("term ended"))
    for attempt in (
        writer.extend(ref, 64 * MiB),
        writer.create_lv(VolumeRef(pool.vg, "x"), 8 * MiB),
        writer.remove_lv(ref),
        writer.change_tags(ref, add=("t",)),
        writer.vg(pool.vg),
    ):
        with pytest.raises(NotSpmError):
            await attempt
    assert runner.commands == []
    assert (await pool.reader.vg(pool.vg)).seqno == seqno


async def test_writer_checks_authority_before_every_command(pool: Pool) -> None:
    class Counting:
        calls = 0

        def check(self) -> None:
            self.calls += 1

    authority = Counting()
    runner = RecordingRunner(ProcessRunner())
    writer = LvmWriter(runner, pool.config, authority)
    ref = VolumeRef(pool.vg, "lv1")
    await writer.create_lv(ref, 8 * MiB)
    await writer.extend(ref, 16 * MiB)
    await writer.extend(ref, 8 * MiB)  # no-op: failed lvextend + reload
    assert authority.calls == len(runner.commands) >= 5


@needs_dm
async def test_refresh_of_an_active_lv(pool: Pool) -> None:
    config = LvmCommandConfig(pool.config.devices, activation=True)
    runner = ProcessRunner()
    reader = LvmReader(runner, config)
    writer = LvmWriter(runner, config, LocalAuthority())
    backend = LvmVolumeBackend(runner, reader, writer)
    ref = VolumeRef(pool.vg, "active1")
    await writer.create_lv(ref, 8 * MiB, activate=True)
    try:
        assert (await reader.lv(ref)).active is True
        assert await backend.size(ref) == 8 * MiB
        await writer.extend(ref, 16 * MiB)  # --driverloaded n: metadata only
        assert (await reader.lv(ref)).size == 16 * MiB
        assert await backend.size(ref) == 8 * MiB  # this host has not refreshed yet
        assert await backend.refresh(ref) == 16 * MiB
    finally:
        await reader.set_active(ref, False)


async def test_the_view_check_reads_a_whole_vg_with_one_lvs(pool: Pool) -> None:
    """Issue 28: the view check's sizes on lvm are one ``lvs --readonly`` per VG, whatever
    the number of LVs asked about; without device-mapper an LV's view is its metadata size
    (no table to fall behind), and an LV that is not there is left out."""
    refs = [VolumeRef(pool.vg, f"lv{i}") for i in range(3)]
    for i, ref in enumerate(refs):
        await pool.writer.create_lv(ref, (8 + 4 * i) * MiB)
    backend = LvmVolumeBackend(pool.runner, pool.reader, None, (pool.vg,))
    before = len(pool.runner.commands)
    sizes = await LvmViewSizes(backend).view_sizes(
        pool.vg, [*refs, VolumeRef(pool.vg, "absent")])
    commands = pool.runner.commands[before:]
    assert len(commands) == 1 and "lvs" in commands[0] and "--readonly" in commands[0]
    assert {r: (s.view, s.metadata) for r, s in sizes.items()} == {
        r: ((8 + 4 * i) * MiB, (8 + 4 * i) * MiB) for i, r in enumerate(refs)}
