"""A bound on growth per event (issue 30 item 3): at most ``max_chunks_per_event`` chunks
unless two fresh samples agree."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from autoextend.lab.waiting import until
from autoextend.monitor import plan, policy
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import DriveInfo, ThresholdCrossed
from tests.monitor.rig import VOL, Rig

POL = policy.DrivePolicy(chunk=128 * MiB, utilization_percent=50, cap_factor=1.1,
                         extent=4 * MiB)


def info(allocation: int, physical: int) -> DriveInfo:
    return DriveInfo("vm1", "vda", "n", "/dev/vg0/lv1", 4096 * MiB, allocation, physical)


@given(st.integers(0, 1 << 34), st.integers(1, 1 << 34), st.integers(0, 1 << 34),
       st.integers(1, 1 << 34))
def test_agreement_needs_two_plausible_samples_that_need_room(
        a1: int, p1: int, a2: int, p2: int) -> None:
    first, second = info(a1, p1), info(a2, p2)
    if plan.agree(first, second, POL):
        assert a1 <= p1 + POL.chunk and a2 <= p2 + POL.chunk  # plausible
        assert policy.needs_extension(a2, p2, POL) and a2 >= a1
    if a2 < a1 or a2 > p2 + POL.chunk:
        assert not plan.agree(first, second, POL)


@given(st.integers(1, 1 << 34), st.integers(0, 1 << 30), st.integers(1, 16))
def test_within_bound_counts_whole_chunks_since_the_event(base: int, grown: int,
                                                          k: int) -> None:
    assert plan.within_bound(base, base + grown, POL, k) == (grown < k * POL.chunk)


async def test_a_bogus_allocation_is_bounded_to_k_chunks_per_event() -> None:
    """The hypervisor reports an allocation no drive can have (far past its end): one event
    grows it by k chunks, then the drive waits for its retry time."""
    rig = Rig(max_chunks_per_event=2)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            await until(lambda: rig.state() is ThresholdState.SET)
            rig.hv.vms["vm1"].drives["vda"].allocation = 3000 * MiB  # bogus
            rig.hv.emit(ThresholdCrossed("vm1", "vda", 192 * MiB, 2808 * MiB))
            await until(lambda: rig.state() is ThresholdState.EXCEEDED, describe=rig.describe)
            await rig.settle()
            assert rig.volumes.sizes[VOL] == 256 * MiB + 2 * 128 * MiB
            assert rig.ext.calls == 2
            snap = rig.monitor.snapshot()[0]["drives"][0]
            assert "not confirmed by two samples" in snap["last_error"]
            tg.cancel_scope.cancel()
    assert [e for e in logs if e["event"] == "extension bounded"]


async def test_agreeing_samples_grow_past_the_bound() -> None:
    """A guest that really wrote two chunks past the end: the fresh samples agree, and the
    drive gets all it needs at once, also with a bound of one chunk."""
    rig = Rig(max_chunks_per_event=1)
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 450 * MiB)  # needs 256 -> 384 -> 512 (-> 640)
        await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
        await rig.settle()
        assert rig.volumes.sizes[VOL] >= 512 * MiB
        assert rig.monitor.snapshot()[0]["drives"][0]["last_error"] == ""
        tg.cancel_scope.cancel()
