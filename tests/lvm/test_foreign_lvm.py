"""Foreign writes (issue 27 item 3) on real lvm2 (activation off, loop PVs): a metadata change
that this process's writer did not make is seen at the next look and named; the writer's own
commits, even while the audit looks at the same moment, never are."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from autoextend.lvm.foreign import ForeignWriteAudit
from autoextend.lvm.lvmconf import render_config
from autoextend.lvm.writer import LvmWriter, WriterTally
from autoextend.volumes import LocalAuthority, VolumeRef

from .support import EXTENT, Pool

pytestmark = pytest.mark.slow


async def outside(pool: Pool, *args: str) -> None:
    """An lvm2 command by another process: not through the writer, so not in its ledger."""
    await pool.runner.run([args[0], "--config", render_config(pool.config),
                           "--autobackup", "n", "--driverloaded", "n", *args[1:]])


async def test_other_writers_are_named_and_ours_never_are(pool: Pool) -> None:
    tally = WriterTally()
    writer = LvmWriter(pool.runner, pool.config, LocalAuthority(), tally=tally)
    audit = ForeignWriteAudit(tally.ledger, pool.reader, [pool.vg])
    a = VolumeRef(pool.vg, "a")
    await writer.create_lv(a, EXTENT)
    assert await audit.look() == []  # the baseline
    done = anyio.Event()
    reported: list[object] = []

    async def ours() -> None:  # the SPM extending while the audit looks
        for i in range(2, 14):
            await writer.extend(a, i * EXTENT)
            await writer.change_tags(a, add=[f"t{i}"])
        done.set()

    async def looks() -> None:
        while not done.is_set():
            reported.extend(await audit.look())
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ours)
        tg.start_soon(looks)
    reported.extend(await audit.look())
    assert reported == [], "the writer's own commits were taken for foreign ones"
    assert tally.ledger.foreign_writes == 0

    await outside(pool, "lvcreate", "--activate", "n", "--zero", "n", "--yes",
                  "--extents", "1", "--name", "intruder", pool.vg)
    [found] = await audit.look()
    assert found.appeared == ("intruder",) and found.vg == pool.vg
    assert "+intruder" in found.describe()
    assert await audit.look() == []  # reported once

    await outside(pool, "lvextend", "--extents", "20", f"{pool.vg}/a")
    await outside(pool, "lvremove", "--yes", f"{pool.vg}/intruder")
    [found] = await audit.look()
    assert found.vanished == ("intruder",)
    assert found.resized == (("a", 13 * EXTENT, 20 * EXTENT),)
    assert found.observed - found.expected == 2
    assert tally.ledger.foreign_writes == 2
