"""The SPM's CREATE (also of a snapshot LV), REMOVE and GROW-PV through its executor on
real lvm2 (activation off, loop PVs), with its journal (issue 27 items 2 and 5): each op
moves ``vg_seqno`` exactly once and is journaled before its verdict; a request served again
by the next term moves nothing and journals nothing more; a snapshot LV names its parent
and is refused (nothing written) when the parent is missing or larger than it."""

from __future__ import annotations

import os

import pytest

from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError
from autoextend.lvm import loopdev
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.writer import LvmWriter
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm.execute import Executor
from autoextend.spm.journal import Op
from autoextend.spm.journalring import JournalWriter, Ring, read_ring
from autoextend.spm.wire import OP_CREATE, OP_GROW_PV, OP_REMOVE, ReasonCode, Request, Status
from autoextend.volumes import LocalAuthority, NoAuthority, SpmAuthority, VolumeRef

from .support import EXTENT, MiB, Pool

pytestmark = pytest.mark.slow
GiB = 1 << 30


def spm(pool: Pool, storage: MemoryStorage, lver: int,
        authority: SpmAuthority | None = None) -> Executor:
    """One SPM term: a writer of its own and a journal writer on the shared ring."""
    authority = authority or LocalAuthority()
    writer = LvmWriter(pool.runner, pool.config, authority)
    backend = LvmVolumeBackend(pool.runner, pool.reader, writer, (pool.vg,))
    journal = JournalWriter(storage, Ring(0, 64), authority, lver=lver, spm_host=1)
    return Executor(backend, authority, ManualClock(), hot_window_s=0.0, max_concurrent=2,
                    epoch=lver, journal=journal)


async def seqno(pool: Pool) -> int:
    return (await pool.reader.vg(pool.vg)).seqno


async def test_create_snapshot_remove_grow_each_one_commit_and_journaled(pool: Pool) -> None:
    storage = MemoryStorage(64 * 256 + 4096, 512)
    first = spm(pool, storage, lver=1)
    s0 = await seqno(pool)
    base = Request(5, pool.vg, "base", 3 * EXTENT, OP_CREATE, GiB)
    verdict = await first.execute(2, 7, base)
    assert verdict is not None and verdict.status is Status.OK, verdict
    assert await seqno(pool) == s0 + 1
    snap = Request(6, pool.vg, "snap1", EXTENT, OP_CREATE, GiB, "base")
    verdict = await first.execute(2, 7, snap)
    assert verdict is not None and verdict.status is Status.OK, verdict
    assert verdict.text == "created on parent base"
    assert await seqno(pool) == s0 + 2
    lv = await pool.reader.lv(VolumeRef(pool.vg, "snap1"))
    assert "autoextend.parent=base" in lv.tags and "autoextend.request=2.7.6" in lv.tags
    # The next term serves the snapshot's request again (its reply was lost): done, one LV.
    second = spm(pool, storage, lver=2)
    again = await second.execute(2, 7, snap)
    assert again is not None and again.status is Status.OK and "already" in again.text
    assert await seqno(pool) == s0 + 2
    # No parent, or a parent larger than the overlay: refused, nothing written.
    for req, reason in ((Request(8, pool.vg, "s2", EXTENT, OP_CREATE, GiB, "nope"),
                         ReasonCode.NO_SUCH_VOLUME),
                        (Request(9, pool.vg, "s3", EXTENT, OP_CREATE, GiB // 2, "base"),
                         ReasonCode.BAD_SIZE)):
        refused = await second.execute(2, 7, req)
        assert refused is not None and refused.status is Status.REJECTED, refused
        assert refused.reason is reason, refused
    assert await seqno(pool) == s0 + 2
    assert sorted(x.name for x in await pool.reader.lvs(pool.vg)) == ["base", "snap1"]
    removed = await second.execute(3, 1, Request(10, pool.vg, "snap1", 1, OP_REMOVE))
    assert removed is not None and removed.status is Status.OK, removed
    assert await seqno(pool) == s0 + 3
    with open(pool.files[1], "r+b") as f:
        f.truncate(os.path.getsize(pool.files[1]) + 16 * MiB)
    await loopdev.set_capacity(pool.devices[1])
    grown = await second.execute(3, 1, Request(11, pool.vg, "", 1, OP_GROW_PV))
    assert grown is not None and grown.status is Status.OK and grown.size == 16 * MiB
    assert await seqno(pool) == s0 + 4
    records = (await read_ring(storage, Ring(0, 64))).records
    got = [(r.entry.op, r.entry.volume, r.entry.old_size, r.entry.new_size, r.entry.host,
            r.entry.request_id, r.entry.lver, r.entry.found) for r in records]
    pv_before = got[-1][2]
    assert got == [
        (Op.CREATE, f"{pool.vg}/base", 0, 3 * EXTENT, 2, 5, 1, False),
        (Op.CREATE, f"{pool.vg}/snap1", 0, EXTENT, 2, 6, 1, False),
        (Op.REMOVE, f"{pool.vg}/snap1", EXTENT, 0, 3, 10, 2, False),
        (Op.GROW_PV, f"{pool.vg}/", pv_before, pv_before + 16 * MiB, 3, 11, 2, False),
    ]


async def test_a_create_an_spm_died_before_journaling_is_journaled_late(pool: Pool) -> None:
    """The old SPM ran ``lvcreate`` and died before its journal record: the next term
    serves the request, finds the LV its request made, and records it FOUND, once."""
    storage = MemoryStorage(64 * 256 + 4096, 512)
    req = Request(5, pool.vg, "lost", EXTENT, OP_CREATE, GiB)
    no_journal = Executor(LvmVolumeBackend(pool.runner, pool.reader, pool.writer, (pool.vg,)),
                          LocalAuthority(), ManualClock(), hot_window_s=0.0,
                          max_concurrent=2)
    assert (await no_journal.execute(2, 7, req)) is not None
    s1 = await seqno(pool)
    nxt = spm(pool, storage, lver=2)
    for _ in range(2):
        verdict = await nxt.execute(2, 7, req)
        assert verdict is not None and verdict.status is Status.OK
    assert await seqno(pool) == s1
    [rec] = (await read_ring(storage, Ring(0, 64))).records
    assert (rec.entry.op, rec.entry.found, rec.entry.new_size) == (Op.CREATE, True, EXTENT)


async def test_a_snapshot_create_out_of_term_writes_nothing(pool: Pool) -> None:
    storage = MemoryStorage(64 * 256 + 4096, 512)
    await pool.writer.create_lv(VolumeRef(pool.vg, "base"), EXTENT)
    s0 = await seqno(pool)
    stale = spm(pool, storage, lver=3, authority=NoAuthority("term ended"))
    with pytest.raises(NotSpmError):
        await stale.execute(2, 7, Request(5, pool.vg, "snap", EXTENT, OP_CREATE, GiB, "base"))
    assert await seqno(pool) == s0
    assert [x.name for x in await pool.reader.lvs(pool.vg)] == ["base"]
    assert (await read_ring(storage, Ring(0, 64))).records == []
