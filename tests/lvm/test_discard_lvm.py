"""Freed extents go back to the array (issue 27 item 4): after a reduce or a remove, the SPM's
writer discards exactly the extents it freed. Real lvm2 (activation off) on loop PVs over
sparse files: the files' allocated bytes in the data area drop by exactly the freed extents,
and every other extent's data still verifies (written and read with O_DIRECT)."""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Sequence

import anyio
import pytest

from autoextend.errors import NotSpmError
from autoextend.lvm.report import PvSegment
from autoextend.lvm.runner import CommandResult, LvmRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.volumes import LocalAuthority, VolumeRef

from .support import EXTENT, Pool

pytestmark = pytest.mark.slow


def allocated(path: str, start: int) -> int:
    """Bytes of ``path`` from ``start`` on that hold data (not holes)."""
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        at = start
        while at < end:
            try:
                data = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:  # ENXIO: no data past `at`
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            total += hole - data
            at = hole
    finally:
        os.close(fd)
    return total


def extents(segs: Sequence[PvSegment], lv: str) -> list[tuple[str, int]]:
    """(device, byte offset) of every extent ``lv`` holds."""
    return [(s.pv, s.pe_start + (s.start + i) * s.extent_size)
            for s in segs if s.lv == lv for i in range(s.count)]


def direct(device: str, offset: int, data: bytes | None = None) -> bytes:
    """O_DIRECT write of ``data`` (one extent) at ``offset``, or read one extent."""
    buf = mmap.mmap(-1, EXTENT)
    fd = os.open(device, (os.O_WRONLY if data is not None else os.O_RDONLY) | os.O_DIRECT)
    try:
        if data is not None:
            buf.write(data)
            assert os.pwritev(fd, [buf], offset) == EXTENT
            return data
        assert os.preadv(fd, [buf], offset) == EXTENT
        return bytes(buf)
    finally:
        os.close(fd)
        buf.close()


async def fill(segs: Sequence[PvSegment], lvs: Sequence[str]) -> dict[tuple[str, int], str]:
    """Random data in every extent of ``lvs``; {extent: sha256}."""
    digests = {}
    for lv in lvs:
        for device, offset in extents(segs, lv):
            data = os.urandom(EXTENT)
            await anyio.to_thread.run_sync(direct, device, offset, data)
            digests[(device, offset)] = hashlib.sha256(data).hexdigest()
    return digests


async def verify(digests: dict[tuple[str, int], str]) -> None:
    for (device, offset), digest in digests.items():
        data = await anyio.to_thread.run_sync(direct, device, offset)
        assert hashlib.sha256(data).hexdigest() == digest, f"{device}@{offset} changed"


def data_bytes(pool: Pool, segs: Sequence[PvSegment]) -> int:
    pe_start = {s.pv: s.pe_start for s in segs}
    return sum(allocated(f, pe_start[d]) for f, d in zip(pool.files, pool.devices, strict=True)
               if d in pe_start)


async def test_reduce_and_remove_discard_exactly_what_they_free(pool: Pool) -> None:
    a, b = VolumeRef(pool.vg, "a"), VolumeRef(pool.vg, "b")
    await pool.writer.create_lv(a, 2 * EXTENT)
    await pool.writer.create_lv(b, 2 * EXTENT)
    await pool.writer.extend(a, 5 * EXTENT)  # a: PE 0-1 and 4-6, b between them
    segs = await pool.writer.segments(pool.vg)
    digests = await fill(segs, ["a", "b"])
    before = data_bytes(pool, segs)

    await pool.writer.reduce(a, 2 * EXTENT)
    after_reduce = await pool.writer.segments(pool.vg)
    assert before - data_bytes(pool, after_reduce) == 3 * EXTENT
    assert pool.writer.discarded.bytes == 3 * EXTENT
    kept = set(extents(after_reduce, "a")) | set(extents(after_reduce, "b"))
    await verify({k: v for k, v in digests.items() if k in kept})

    await pool.writer.remove_lv(b)
    after_remove = await pool.writer.segments(pool.vg)
    assert before - data_bytes(pool, after_remove) == 5 * EXTENT
    assert pool.writer.discarded.bytes == 5 * EXTENT
    await verify({k: v for k, v in digests.items() if k in set(extents(after_remove, "a"))})


async def test_discard_off_leaves_the_extents_allocated(pool: Pool) -> None:
    writer = LvmWriter(pool.runner, pool.config, LocalAuthority(), discard_freed=False)
    a = VolumeRef(pool.vg, "a")
    await writer.create_lv(a, 4 * EXTENT)
    segs = await writer.segments(pool.vg)
    await fill(segs, ["a"])
    before = data_bytes(pool, segs)
    await writer.reduce(a, EXTENT)
    assert data_bytes(pool, await writer.segments(pool.vg)) == before
    assert writer.discarded.bytes == 0


class LosesTermAfter:
    """An SPM authority that is lost right after the named command ran (a fenced SPM)."""

    def __init__(self, inner: LvmRunner, command: str) -> None:
        self.inner, self.command, self.lost = inner, command, False

    def check(self) -> None:
        if self.lost:
            raise NotSpmError("SPM term ended")

    async def run(self, args: Sequence[str]) -> CommandResult:
        result = await self.inner.run(args)
        self.lost = self.lost or args[0] == self.command
        return result

    async def aclose(self) -> None:
        await self.inner.aclose()

    def for_vg(self, vg: str) -> LvmRunner:
        return self  # every command through this wrapper


async def test_an_spm_that_lost_its_term_discards_nothing(pool: Pool) -> None:
    fenced = LosesTermAfter(pool.runner, "lvreduce")
    writer = LvmWriter(fenced, pool.config, fenced)
    a = VolumeRef(pool.vg, "a")
    await writer.create_lv(a, 4 * EXTENT)
    segs = await writer.segments(pool.vg)
    await fill(segs, ["a"])
    before = data_bytes(pool, segs)
    result = await writer.reduce(a, EXTENT)  # the reduce happened; the discard must not
    assert result.changed and result.size == EXTENT
    assert data_bytes(pool, segs) == before and writer.discarded.bytes == 0
