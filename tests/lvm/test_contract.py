"""One contract for every VolumeBackend, run against both ``lvm`` (real lvm2, activation off)
and ``loop`` (sparse files on loop devices). The parts that need a host to see a size change
on its block device need device-mapper for ``lvm`` and are skipped without it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
import pytest

from autoextend.errors import NotSpmError
from autoextend.lvm.loop_backend import LoopVolumeBackend, attached_devices
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig, device_mapper_present
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import ProcessRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.volumes import LocalAuthority, VolumeBackend, VolumeNotFound, VolumeRef

from .support import EXTENT, MiB, make_pv_files, release_devices, unique_name

pytestmark = pytest.mark.slow  # lvm2 and loop devices (make unit runs none)


@dataclass
class Subject:
    kind: str
    backend: VolumeBackend            # may write (SPM / single host)
    host_side: VolumeBackend          # no authority: reads and refreshes only
    create: Callable[[str, int], Awaitable[VolumeRef]]
    sees_device_sizes: bool           # block devices exist on this host (loop, or lvm + dm)


async def _lvm_subject() -> AsyncIterator[Subject]:
    workdir = tempfile.mkdtemp(prefix="autoextend-lvmcontract-", dir="/var/tmp")
    devices: list[str] = []
    try:
        _, devices = await make_pv_files(workdir, 2, 128 * MiB)
        dm = device_mapper_present()
        config = LvmCommandConfig(tuple(devices), activation=dm)
        runner = ProcessRunner()
        writer = LvmWriter(runner, config, LocalAuthority())
        reader = LvmReader(runner, config)
        vg = unique_name()
        await writer.pvcreate(devices)
        await writer.vgcreate(vg, devices, extent_size=EXTENT)
        created: list[VolumeRef] = []

        async def create(name: str, size: int) -> VolumeRef:
            ref = VolumeRef(vg, name)
            await writer.create_lv(ref, size, activate=dm)
            created.append(ref)
            return ref

        try:
            yield Subject(
                "lvm",
                LvmVolumeBackend(runner, reader, writer, (vg,)),
                LvmVolumeBackend(runner, reader, None, (vg,)),
                create,
                dm,
            )
        finally:
            if dm:
                for ref in created:
                    await reader.set_active(ref, False)
    finally:
        await release_devices(devices)
        shutil.rmtree(workdir, ignore_errors=True)


async def _loop_subject() -> AsyncIterator[Subject]:
    root = tempfile.mkdtemp(prefix="autoextend-loopcontract-", dir="/var/tmp")
    backend = LoopVolumeBackend(root, EXTENT, LocalAuthority())
    vg = unique_name()
    try:

        async def create(name: str, size: int) -> VolumeRef:
            ref = VolumeRef(vg, name)
            await backend.create(ref, size)
            return ref

        yield Subject("loop", backend, LoopVolumeBackend(root, EXTENT, None), create, True)
    finally:
        prefix = os.path.realpath(root) + "/"
        mine = [dev for dev, path in attached_devices().items() if path.startswith(prefix)]
        await release_devices(mine)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["lvm", "loop"])
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    factory = _lvm_subject if request.param == "lvm" else _loop_subject
    async for value in factory():
        yield value


def _needs_device_sizes(subject: Subject) -> None:
    if not subject.sees_device_sizes:
        pytest.skip("needs device-mapper: /dev/mapper/control is absent (or has no driver)")


async def test_extend_rounds_up_and_never_shrinks(subject: Subject) -> None:
    ref = await subject.create("v1", 8 * MiB)
    result = await subject.backend.extend(ref, 17 * MiB)
    assert (result.size, result.changed) == (20 * MiB, True)
    assert (await subject.backend.extend(ref, 20 * MiB)).changed is False
    shrink = await subject.backend.extend(ref, 4 * MiB)
    assert (shrink.size, shrink.changed) == (20 * MiB, False)


async def test_concurrent_extends_end_at_the_maximum(subject: Subject) -> None:
    ref = await subject.create("v1", 4 * MiB)
    sizes = [(index * 3 % 10 + 1) * 4 * MiB for index in range(10)]
    results = []

    async def extend(size: int) -> None:
        results.append(await subject.backend.extend(ref, size))

    async with anyio.create_task_group() as tg:
        for size in sizes:
            tg.start_soon(extend, size)
    assert max(result.size for result in results) == max(sizes)
    final = await subject.backend.extend(ref, 4 * MiB)
    assert (final.size, final.changed) == (max(sizes), False)


async def test_missing_volume(subject: Subject) -> None:
    ref = await subject.create("v1", 4 * MiB)
    with pytest.raises(VolumeNotFound):
        await subject.backend.extend(VolumeRef(ref.vg, "absent"), 8 * MiB)
    with pytest.raises(VolumeNotFound):
        await subject.backend.size(VolumeRef(ref.vg, "absent"))


async def test_lookup_maps_device_paths_to_volumes(subject: Subject) -> None:
    ref = await subject.create("disk-1", 4 * MiB)
    path = subject.backend.device_path(ref)
    assert subject.backend.lookup(path) == ref
    assert subject.host_side.lookup(path) == ref
    assert subject.backend.lookup("/dev/sda") is None
    assert subject.backend.lookup("/dev/other_vg/disk-1") is None
    if subject.kind == "lvm":
        assert subject.backend.lookup(f"/dev/mapper/{ref.vg}-disk--1") == ref


async def test_host_side_cannot_extend(subject: Subject) -> None:
    ref = await subject.create("v1", 8 * MiB)
    with pytest.raises(NotSpmError):
        await subject.host_side.extend(ref, 64 * MiB)
    assert (await subject.backend.extend(ref, 8 * MiB)).size == 8 * MiB


async def test_refresh_makes_this_host_see_the_new_size(subject: Subject) -> None:
    _needs_device_sizes(subject)
    ref = await subject.create("v1", 8 * MiB)
    assert await subject.host_side.size(ref) == 8 * MiB
    await subject.backend.extend(ref, 24 * MiB)
    assert await subject.host_side.size(ref) == 8 * MiB  # not refreshed yet
    assert await subject.host_side.refresh(ref) == 24 * MiB
    assert await subject.host_side.size(ref) == 24 * MiB


async def test_size_without_device_is_the_metadata_size(subject: Subject) -> None:
    if subject.sees_device_sizes:
        pytest.skip("this host has block devices for the volumes (covered by the refresh test)")
    ref = await subject.create("v1", 8 * MiB)
    await subject.backend.extend(ref, 12 * MiB)
    assert await subject.host_side.size(ref) == 12 * MiB
