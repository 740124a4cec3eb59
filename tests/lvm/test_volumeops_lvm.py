"""CREATE, REMOVE and GROW-PV (issue 27 item 2) on real lvm2 (activation off, loop PVs):
each op moves ``vg_seqno`` exactly once, a second serving of the same request moves it not
at all, and a create served again by a later SPM term (the previous one killed after its
``lvcreate``, before its reply) finds its own LV and makes no second one."""

from __future__ import annotations

import os

import pytest

from autoextend.errors import NotSpmError
from autoextend.lvm import loopdev
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.vsize import vsize_from_tags
from autoextend.lvm.writer import LvmWriter
from autoextend.monitor.core import VolumeInUse
from autoextend.poolops import PoolOpError, PoolOps
from autoextend.spm import volumeops
from autoextend.spm.wire import ReasonCode, Status
from autoextend.volumes import LocalAuthority, NoAuthority, VolumeRef

from .support import EXTENT, MiB, Pool

pytestmark = pytest.mark.slow


async def seqno(pool: Pool) -> int:
    return (await pool.reader.vg(pool.vg)).seqno


async def no_refusal() -> str | None:
    return None


async def test_create_is_one_commit_and_idempotent_by_request(pool: Pool) -> None:
    vol = VolumeRef(pool.vg, "disk1")
    req = volumeops.request_tag(2, 7, 41)
    before = await seqno(pool)
    verdict = await volumeops.create(pool.writer, vol, 5 * MiB, 10 << 30, owner="host-2",
                                     request=req)
    assert verdict.status is Status.OK and verdict.size == 2 * EXTENT
    assert await seqno(pool) == before + 1
    lv = await pool.reader.lv(vol)
    assert vsize_from_tags(lv.tags) == 10 << 30
    assert req in lv.tags and "autoextend.owner=host-2" in lv.tags
    # Served again (a reply that was lost, or the next SPM term): done, nothing written.
    again = await volumeops.create(pool.writer, vol, 5 * MiB, 10 << 30, owner="host-2",
                                   request=req)
    assert again.status is Status.OK and again.size == 2 * EXTENT
    assert await seqno(pool) == before + 1
    # Another request for the same name: refused, the LV untouched.
    other = await volumeops.create(pool.writer, vol, 50 * MiB, 1 << 30, owner="host-3",
                                   request=volumeops.request_tag(3, 1, 41))
    assert other.status is Status.REJECTED and other.reason is ReasonCode.VOLUME_EXISTS
    assert other.text.endswith("exists already (made by request 2.7.41)"), other.text
    assert await seqno(pool) == before + 1
    assert (await pool.reader.lv(vol)).size == 2 * EXTENT
    assert [lv.name for lv in await pool.reader.lvs(pool.vg)] == ["disk1"]


async def test_create_served_by_the_next_term(pool: Pool) -> None:
    """The first SPM ran lvcreate and died before its reply; the request is still in the
    host's box, and the next term's writer serves it: one LV, one commit in all."""
    vol = VolumeRef(pool.vg, "vm9-disk")
    req = volumeops.request_tag(1, 3, 9)
    before = await seqno(pool)
    first = LvmWriter(pool.runner, pool.config, LocalAuthority())
    await volumeops.create(first, vol, EXTENT, 1 << 30, owner="host-1", request=req)
    second = LvmWriter(pool.runner, pool.config, LocalAuthority())
    verdict = await volumeops.create(second, vol, EXTENT, 1 << 30, owner="host-1",
                                     request=req)
    assert verdict.status is Status.OK and "already" in verdict.text
    assert await seqno(pool) == before + 1
    assert [lv.name for lv in await pool.reader.lvs(pool.vg)] == ["vm9-disk"]


async def test_a_writer_out_of_term_creates_nothing(pool: Pool) -> None:
    vol = VolumeRef(pool.vg, "late")
    before = await seqno(pool)
    stale = LvmWriter(pool.runner, pool.config, NoAuthority("term ended"))
    with pytest.raises(NotSpmError):
        await volumeops.create(stale, vol, EXTENT, 1 << 30, owner="host-1",
                               request=volumeops.request_tag(1, 1, 1))
    assert await seqno(pool) == before
    assert await pool.reader.lvs(pool.vg) == ()


async def test_remove_is_one_commit_refused_when_in_use_and_idempotent(pool: Pool) -> None:
    vol = VolumeRef(pool.vg, "gone")
    await pool.writer.create_lv(vol, 3 * EXTENT)
    before = await seqno(pool)

    async def busy() -> str | None:
        return "in use on host 2"

    refused = await volumeops.remove(pool.writer, vol, busy)
    assert refused.status is Status.REJECTED and refused.reason is ReasonCode.VOLUME_BUSY
    assert refused.text == "in use on host 2"
    assert await seqno(pool) == before
    done = await volumeops.remove(pool.writer, vol, no_refusal)
    assert done.status is Status.OK and done.text == "removed"
    assert await seqno(pool) == before + 1
    assert await pool.reader.lvs(pool.vg) == ()
    again = await volumeops.remove(pool.writer, vol, busy)  # gone: no gate needed
    assert again.status is Status.OK and again.text.startswith("not there")
    assert await seqno(pool) == before + 1


async def test_grow_pv_after_the_device_grew(pool: Pool) -> None:
    vg_before = await pool.reader.vg(pool.vg)
    nothing = await volumeops.grow(pool.writer, pool.vg)
    assert nothing.status is Status.OK and nothing.size == 0
    assert await seqno(pool) == vg_before.seqno
    with open(pool.files[0], "r+b") as f:
        f.truncate(os.path.getsize(pool.files[0]) + 64 * MiB)
    await loopdev.set_capacity(pool.devices[0])
    verdict = await volumeops.grow(pool.writer, pool.vg)
    assert verdict.status is Status.OK and verdict.size == 64 * MiB
    vg_after = await pool.reader.vg(pool.vg)
    assert vg_after.seqno == vg_before.seqno + 1
    assert vg_after.extent_count == vg_before.extent_count + 64 * MiB // EXTENT
    again = await volumeops.grow(pool.writer, pool.vg)
    assert again.size == 0 and (await seqno(pool)) == vg_after.seqno


class Users:
    """The monitor's answer to "which volumes do this host's VMs use" (a fixed list)."""

    def __init__(self, uses: list[VolumeInUse]) -> None:
        self.uses = uses

    def volumes_in_use(self) -> list[VolumeInUse]:
        return self.uses


async def test_local_mode_remove_is_refused_while_a_vm_here_uses_it(pool: Pool) -> None:
    vol = VolumeRef(pool.vg, "used")
    await pool.writer.create_lv(vol, EXTENT)
    ops = PoolOps(LvmVolumeBackend(pool.runner, pool.reader, pool.writer, (pool.vg,)),
                  (pool.vg,), 64 * MiB, None)
    use = VolumeInUse("vm1", "vda", vol, 0, EXTENT, 1 << 30, 1 << 30)
    before = await seqno(pool)
    with pytest.raises(PoolOpError, match="not removed|remove refused") as err:
        await ops.volume_remove({"volume": str(vol)}, Users([use]))
    assert "VM vm1 uses it (drive vda)" in str(err.value)
    assert await seqno(pool) == before
    done = await ops.volume_remove({"volume": str(vol)}, Users([]))
    assert done == {"volume": str(vol), "done": True, "size": 0, "text": "removed"}
    assert await seqno(pool) == before + 1
