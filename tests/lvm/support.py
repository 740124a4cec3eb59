"""Helpers and fixtures for the LVM tests: real lvm2 on loop-device PVs (sparse files under
/var/tmp), activation off, always detached and removed afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from autoextend.lvm import loopdev
from autoextend.lvm.lvmconf import LvmCommandConfig, device_mapper_present
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import CommandResult, LvmRunner, ProcessRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.volumes import LocalAuthority

MiB = 1 << 20
EXTENT = 4 * MiB

needs_dm = pytest.mark.skipif(
    not device_mapper_present(), reason="needs device-mapper: /dev/mapper/control is absent (or has no driver)"
)


class RecordingRunner:
    """Wraps a runner and records every command it was asked to run."""

    def __init__(self, inner: LvmRunner) -> None:
        self.inner = inner
        self.commands: list[tuple[str, ...]] = []

    async def run(self, args: Sequence[str]) -> CommandResult:
        self.commands.append(tuple(args))
        return await self.inner.run(args)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def for_vg(self, vg: str) -> LvmRunner:
        return self  # every command through this wrapper


@dataclass
class Pool:
    """Loop-device PVs and one VG over all of them."""

    workdir: str
    files: list[str]
    devices: list[str]
    vg: str
    config: LvmCommandConfig
    runner: RecordingRunner
    writer: LvmWriter
    reader: LvmReader
    extra_devices: list[str] = field(default_factory=list)


def unique_name(prefix: str = "aet") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def make_pv_files(workdir: str, count: int, size: int) -> tuple[list[str], list[str]]:
    files: list[str] = []
    devices: list[str] = []
    for index in range(count):
        path = os.path.join(workdir, f"pv{index}.img")
        with open(path, "wb") as file:
            file.truncate(size)
        files.append(path)
        devices.append(await loopdev.attach(path))
    return files, devices


async def release_under(root: str) -> None:
    """Detach every loop device whose backing file is under ``root``, as listed now.

    Never by a device number kept from before: the kernel hands a freed number to the next
    attach at once, and with several pytest workers that is another worker's. A second
    detach of a number a test had already detached took that worker's PV from under its
    ``vgcreate`` ("Device seek error", seen with 4 rig workers).
    """
    prefix = os.path.realpath(root) + os.sep
    for device in await loopdev.list_devices():
        if device.backing_file.startswith(prefix):  # a deleted file's too
            try:
                await loopdev.detach(device.name)
            except loopdev.LoopError:
                pass  # detached since the listing


@pytest.fixture
async def pool() -> AsyncIterator[Pool]:
    """A VG of three 256 MiB PVs with 4 MiB extents (about 760 MiB free)."""
    workdir = tempfile.mkdtemp(prefix="autoextend-lvmtest-", dir="/var/tmp")
    try:
        files, devices = await make_pv_files(workdir, 3, 256 * MiB)
        config = LvmCommandConfig(tuple(devices))
        runner = RecordingRunner(ProcessRunner(timeout_s=30.0))
        writer = LvmWriter(runner, config, LocalAuthority())
        vg = unique_name()
        await writer.pvcreate(devices)
        await writer.vgcreate(vg, devices, extent_size=EXTENT)
        yield Pool(workdir, files, devices, vg, config, runner, writer, LvmReader(runner, config))
    finally:
        await release_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
