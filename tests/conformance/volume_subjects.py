"""Every VolumeBackend the conformance suite runs, each built by an async context manager.

``lvm`` (real lvm2 on loop-device PVs, activation only with device-mapper), ``loop`` (sparse
files on loop devices), ``memory`` (the in-memory fake of the monitor's unit tests) and the
reserve wrapper (``[policy] vg_reserve_mib``) over the memory fake and over the loop backend.
The real ones need root, loop devices and lvm2: their parameters are marked ``slow``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig, device_mapper_present
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.reserve import FreeSpaceBackend, ReservedSpace
from autoextend.lvm.runner import ProcessRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.monitor.memory import MemoryVolumes
from autoextend.volumes import LocalAuthority, VolumeRef
from tests.lvm.support import EXTENT, MiB, make_pv_files, release_under, unique_name

RESERVE = 8 * MiB  # what the reserve-wrapped subjects keep free in their VG


@dataclass
class Subject:
    kind: str
    backend: FreeSpaceBackend         # may write (SPM / single host)
    host_side: FreeSpaceBackend       # no authority: reads and refreshes only
    create: Callable[[str, int], Awaitable[VolumeRef]]
    sees_device_sizes: bool           # this host has block devices (sizes change on refresh)
    extent: int                       # sizes round up to this
    # Give the VG a capacity in bytes (None: the VG is finite already, as lvm's is).
    limit: Callable[[str, int], Awaitable[None]] | None


@contextlib.asynccontextmanager
async def lvm_subject() -> AsyncIterator[Subject]:
    workdir = tempfile.mkdtemp(prefix="autoextend-lvmcontract-", dir="/var/tmp")
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
                create, dm, EXTENT, None,
            )
        finally:
            if dm:
                for ref in created:
                    await reader.set_active(ref, False)
    finally:
        await release_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def loop_subject(reserve: int = 0) -> AsyncIterator[Subject]:
    root = tempfile.mkdtemp(prefix="autoextend-loopcontract-", dir="/var/tmp")
    backend = LoopVolumeBackend(root, EXTENT, LocalAuthority())
    host = LoopVolumeBackend(root, EXTENT, None)
    vg = unique_name()
    try:

        async def create(name: str, size: int) -> VolumeRef:
            ref = VolumeRef(vg, name)
            await backend.create(ref, size)
            return ref

        if reserve:
            reserves = {vg: reserve}
            yield Subject("reserve-loop", ReservedSpace(backend, reserves, EXTENT),
                          ReservedSpace(host, reserves, EXTENT), create, True, EXTENT,
                          backend.set_vg_capacity)
        else:
            yield Subject("loop", backend, host, create, True, EXTENT, backend.set_vg_capacity)
    finally:
        await release_under(root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def memory_subject(reserve: int = 0) -> AsyncIterator[Subject]:
    volumes = MemoryVolumes(extent_size=EXTENT)
    vg = unique_name()

    async def create(name: str, size: int) -> VolumeRef:
        ref = VolumeRef(vg, name)
        await volumes.create(ref, size)
        return ref

    if reserve:
        reserves = {vg: reserve}
        yield Subject("reserve-memory", ReservedSpace(volumes, reserves, EXTENT),
                      ReservedSpace(volumes.host_side(), reserves, EXTENT), create, False,
                      EXTENT, volumes.set_vg_capacity)
    else:
        yield Subject("memory", volumes, volumes.host_side(), create, False, EXTENT,
                      volumes.set_vg_capacity)


SUBJECTS: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Subject]]] = {
    "memory": memory_subject,
    "reserve-memory": lambda: memory_subject(RESERVE),
    "lvm": lvm_subject,
    "loop": loop_subject,
    "reserve-loop": lambda: loop_subject(RESERVE),
}
REAL = ("lvm", "loop", "reserve-loop")


@pytest.fixture(params=[pytest.param(kind, marks=pytest.mark.slow) if kind in REAL else kind
                        for kind in SUBJECTS])
async def volume_subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    async with SUBJECTS[request.param]() as subject:
        yield subject
