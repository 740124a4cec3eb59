"""One contract for every VolumeBackend: ``lvm`` (real lvm2, activation only with
device-mapper), ``loop`` (sparse files on loop devices), the in-memory fake, and the reserve
wrapper over the fake and over ``loop``. The parts that need a host to see a size change on
its block device are skipped for subjects without block devices (the fake; lvm without
device-mapper), which get the metadata-size test instead."""

from __future__ import annotations

import anyio
import pytest

from autoextend.errors import NotSpmError
from autoextend.volumes import ExtendResult, VolumeNotFound, VolumeRef, VolumeSpaceError
from tests.conformance.volume_subjects import Subject
from tests.lvm.support import MiB


def _rounded(subject: Subject, size: int) -> int:
    return -(-size // subject.extent) * subject.extent


def _needs_device_sizes(subject: Subject) -> None:
    if not subject.sees_device_sizes:
        pytest.skip(f"{subject.kind}: no block devices on this host (no device-mapper, or a fake)")


async def test_extend_rounds_up_and_never_shrinks(volume_subject: Subject) -> None:
    subject = volume_subject
    ref = await subject.create("v1", 8 * MiB)
    grown = _rounded(subject, 17 * MiB)
    assert grown > 17 * MiB  # every subject has extents bigger than 1 MiB
    result = await subject.backend.extend(ref, 17 * MiB)
    assert (result.size, result.changed) == (grown, True)
    assert result.previous in (None, 8 * MiB)  # the size before, where the backend knows it
    assert (await subject.backend.extend(ref, grown)).changed is False
    shrink = await subject.backend.extend(ref, 4 * MiB)
    assert (shrink.size, shrink.changed) == (grown, False)


async def test_concurrent_extends_end_at_the_maximum(volume_subject: Subject) -> None:
    subject = volume_subject
    ref = await subject.create("v1", 4 * MiB)
    sizes = [(index * 3 % 10 + 1) * 4 * MiB for index in range(10)]
    results: list[ExtendResult] = []

    async def extend(size: int) -> None:
        results.append(await subject.backend.extend(ref, size))

    async with anyio.create_task_group() as tg:
        for size in sizes:
            tg.start_soon(extend, size)
    assert max(result.size for result in results) == max(sizes)
    final = await subject.backend.extend(ref, 4 * MiB)
    assert (final.size, final.changed) == (max(sizes), False)


async def test_missing_volume(volume_subject: Subject) -> None:
    subject = volume_subject
    ref = await subject.create("v1", 4 * MiB)
    with pytest.raises(VolumeNotFound):
        await subject.backend.extend(VolumeRef(ref.vg, "absent"), 8 * MiB)
    with pytest.raises(VolumeNotFound):
        await subject.backend.size(VolumeRef(ref.vg, "absent"))
    if subject.sees_device_sizes or subject.kind != "lvm":  # lvm refreshes through dm
        with pytest.raises(VolumeNotFound):
            await subject.host_side.refresh(VolumeRef(ref.vg, "absent"))


async def test_extend_past_the_pool_fails_and_keeps_the_size(volume_subject: Subject) -> None:
    subject = volume_subject
    ref = await subject.create("v1", 8 * MiB)
    if subject.limit is not None:
        await subject.limit(ref.vg, 64 * MiB)
    with pytest.raises(VolumeSpaceError):
        await subject.backend.extend(ref, 16 << 30)
    assert await subject.backend.size(ref) == 8 * MiB
    assert (await subject.backend.extend(ref, 12 * MiB)).size == _rounded(subject, 12 * MiB)


async def test_lookup_maps_device_paths_to_volumes(volume_subject: Subject) -> None:
    subject = volume_subject
    ref = await subject.create("disk-1", 4 * MiB)
    path = subject.backend.device_path(ref)
    assert subject.backend.lookup(path) == ref
    assert subject.host_side.lookup(path) == ref
    assert subject.backend.lookup("/dev/sda") is None
    assert subject.backend.lookup("/dev/other_vg/disk-1") is None
    if subject.kind == "lvm":
        assert subject.backend.lookup(f"/dev/mapper/{ref.vg}-disk--1") == ref


async def test_host_side_cannot_extend(volume_subject: Subject) -> None:
    subject = volume_subject
    ref = await subject.create("v1", 8 * MiB)
    with pytest.raises(NotSpmError):
        await subject.host_side.extend(ref, 64 * MiB)
    assert (await subject.backend.extend(ref, 8 * MiB)).size == 8 * MiB


async def test_refresh_makes_this_host_see_the_new_size(volume_subject: Subject) -> None:
    subject = volume_subject
    _needs_device_sizes(subject)
    ref = await subject.create("v1", 8 * MiB)
    assert await subject.host_side.size(ref) == 8 * MiB
    await subject.backend.extend(ref, 24 * MiB)
    assert await subject.host_side.size(ref) == 8 * MiB  # not refreshed yet
    assert await subject.host_side.refresh(ref) == 24 * MiB
    assert await subject.host_side.size(ref) == 24 * MiB


async def test_size_without_device_is_the_metadata_size(volume_subject: Subject) -> None:
    subject = volume_subject
    if subject.sees_device_sizes:
        pytest.skip("this host has block devices for the volumes (covered by the refresh test)")
    ref = await subject.create("v1", 8 * MiB)
    await subject.backend.extend(ref, 12 * MiB)
    assert await subject.host_side.size(ref) == 12 * MiB


async def test_vg_figures_follow_the_volumes(volume_subject: Subject) -> None:
    """``vg_figures`` (``volumes.ReportsVgFigures``, the capacity watcher's source): a VG's
    size and free bytes, free dropping by what an extension took; read-only (the host side
    answers the same); a VG that does not exist is left out (never made-up figures, and
    never a failed look for the VGs that do exist)."""
    subject = volume_subject
    ref = await subject.create("figs", 8 * MiB)
    if subject.limit is not None:
        assert await subject.backend.vg_figures([ref.vg]) == []  # unlimited: no figures
        await subject.limit(ref.vg, 64 * MiB)
    [before] = await subject.backend.vg_figures([ref.vg])
    assert before.vg == ref.vg and 0 <= before.free < before.size
    if subject.limit is not None:
        assert before.size == 64 * MiB and before.free == 64 * MiB - _rounded(subject, 8 * MiB)
    await subject.backend.extend(ref, 8 * MiB + 2 * subject.extent)
    [after] = await subject.backend.vg_figures([ref.vg])
    assert after.size == before.size and before.free - after.free == 2 * subject.extent
    assert await subject.host_side.vg_figures([ref.vg]) == [after]
    assert await subject.backend.vg_figures([]) == []
    assert await subject.backend.vg_figures([ref.vg, "nosuchvg"]) == [after]
    assert await subject.backend.vg_figures(["nosuchvg"]) == []


async def test_metadata_figures_only_where_the_pool_has_metadata(
        volume_subject: Subject) -> None:
    """lvm gives the VG's metadata area (``vg_mda_size``/``vg_mda_free``) and its LVs'
    segments, and the area's free space drops as the metadata grows (an extend that cannot
    continue the LV adds a segment); the loop and in-memory backends have none (None)."""
    subject = volume_subject
    ref = await subject.create("meta", 8 * MiB)
    other = await subject.create("meta2", 8 * MiB)  # so that the next extend fragments
    if subject.limit is not None:
        await subject.limit(ref.vg, 64 * MiB)
    [before] = await subject.backend.vg_figures([ref.vg])
    if subject.kind != "lvm":
        assert (before.mda_size, before.mda_free, before.segments, before.max_segments) == (
            None, None, None, None)
        return
    assert before.mda_size is not None and before.mda_free is not None
    assert 0 < before.mda_free <= before.mda_size // 2  # lvm2 keeps room for two copies
    assert (before.segments, before.max_segments) == (2, 1)
    for _ in range(8):  # each adds a segment: the two LVs' extents interleave
        for volume in (ref, other):
            size = await subject.backend.metadata_size(volume)
            await subject.backend.extend(volume, size + subject.extent)
    [after] = await subject.backend.vg_figures([ref.vg])
    assert (after.segments, after.max_segments) == (18, 9)
    assert after.mda_size == before.mda_size
    assert after.mda_free is not None and after.mda_free < before.mda_free
    assert await subject.host_side.vg_figures([ref.vg]) == [after]
