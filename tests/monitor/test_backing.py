"""Backing store full (issue 30 item 2): the pure rule, a stale ENOSPC, and a full array
against the in-memory hypervisor."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from autoextend.lab.waiting import until
from autoextend.monitor.backing import EnospcKind, EnospcSample, classify, has_room
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import (
    DriveIoError,
    EnospcPause,
    PauseReason,
    RunState,
    ThresholdCrossed,
    VmPaused,
)
from autoextend.monitor.vmtask import PAUSE_FOLLOWS_S
from tests.monitor.rig import VOL, Rig

sizes = st.integers(min_value=1, max_value=1 << 40)


@st.composite
def samples(draw: st.DrawFn) -> EnospcSample:
    physical = draw(st.integers(min_value=2, max_value=1 << 40))
    watermark = draw(st.integers(min_value=1, max_value=physical - 1))
    armed = draw(st.sampled_from([0, physical - watermark]))
    seen = draw(st.sampled_from([0, armed, max(1, armed - 1)]))
    allocation = draw(st.integers(min_value=0, max_value=physical + watermark))
    resumed_on = draw(st.one_of(st.none(), st.just((physical, armed)),
                                st.tuples(sizes, sizes)))
    return EnospcSample(armed, seen, allocation, physical, watermark, resumed_on)


@given(samples())
def test_room_only_when_armed_unfired_and_under_the_watermark(s: EnospcSample) -> None:
    kind = classify(s)
    if kind is not EnospcKind.VOLUME_FULL:
        assert s.armed > 0 and s.seen == s.armed
        assert s.physical - s.allocation > s.watermark
    if s.seen != s.armed or s.armed == 0 or s.allocation >= s.armed:
        assert kind is EnospcKind.VOLUME_FULL  # the volume's own: extend


@given(samples())
def test_backing_store_full_needs_our_resume_on_this_size(s: EnospcSample) -> None:
    kind = classify(s)
    if kind is EnospcKind.BACKING_STORE_FULL:
        assert s.resumed_on == (s.physical, s.armed)
    if has_room(s) and s.resumed_on != (s.physical, s.armed):
        assert kind is EnospcKind.ROOM


@given(st.integers(min_value=1, max_value=1 << 30), st.integers(min_value=1, max_value=64),
       st.integers(min_value=1, max_value=8))
def test_a_stale_enospc_after_our_extension_is_never_backing_store_full(
        watermark: int, chunks: int, grown_by: int) -> None:
    """An ENOSPC at the old size, handled after the extension landed and the threshold was
    re-armed on the new size: room, but never backing store full (no resume was sent on the
    new size), so it is resumed without an extension and without a warning."""
    chunk = 2 * watermark
    old = chunks * chunk + watermark
    resumed_on = (old, old - watermark)  # our last resume (if any) was on the old size
    new = old + grown_by * chunk
    stale = EnospcSample(armed=new - watermark, seen=new - watermark, allocation=old,
                         physical=new, watermark=watermark, resumed_on=resumed_on)
    assert classify(stale) is EnospcKind.ROOM
    assert classify(EnospcSample(new - watermark, new - watermark, old, new, watermark,
                                 None)) is EnospcKind.ROOM


def test_the_same_sample_after_our_resume_is_backing_store_full() -> None:
    s = EnospcSample(armed=192 * MiB, seen=192 * MiB, allocation=100 * MiB,
                     physical=256 * MiB, watermark=64 * MiB)
    assert classify(s) is EnospcKind.ROOM
    again = EnospcSample(192 * MiB, 192 * MiB, 100 * MiB, 256 * MiB, 64 * MiB,
                         resumed_on=(256 * MiB, 192 * MiB))
    assert classify(again) is EnospcKind.BACKING_STORE_FULL
    fired = EnospcSample(192 * MiB, 0, 100 * MiB, 256 * MiB, 64 * MiB, (256 * MiB, 192 * MiB))
    assert classify(fired) is EnospcKind.VOLUME_FULL


async def paused_past_the_end_then_extended(rig: Rig) -> None:
    """vm1 writes past the end of vda with its events held back (paused); the crossing
    alone is sent, and the extension (held by ``rig.ext.gate``) lands and re-arms."""
    await until(lambda: rig.state() is ThresholdState.SET)
    rig.hv.write("vm1", "vda", 300 * MiB, events=False)  # paused; events held back
    rig.hv.emit(ThresholdCrossed("vm1", "vda", 192 * MiB, 108 * MiB))
    await until(lambda: rig.state() is ThresholdState.EXTENDING)
    assert rig.ext.gate is not None
    rig.ext.gate.set()
    await until(lambda: rig.volumes.sizes[VOL] == 384 * MiB
                and rig.state() is ThresholdState.SET, describe=rig.describe)
    await rig.settle()


async def next_pause_is_the_volumes_own(rig: Rig) -> None:
    """After the stale pause, the next pause is the volume's own: extended and resumed at
    once, with no backoff step owed (the clock does not move)."""
    rig.hv.write("vm1", "vda", 100 * MiB)
    await until(lambda: rig.hv.resumes == ["vm1", "vm1"], describe=rig.describe)
    assert rig.volumes.sizes[VOL] == 512 * MiB and rig.tally.backing_full == 0


async def test_stale_enospc_after_our_extension_resumes_without_classifying() -> None:
    """The finding of the last session: the guest wrote past the end; the ENOSPC event is
    handled only after the extension it needed landed and the threshold was re-armed. It
    has room now: resumed, no second extension, no backing-store-full."""
    rig = Rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    rig.ext.gate = anyio.Event()
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            await paused_past_the_end_then_extended(rig)
            assert rig.hv.resumes == []  # the hypervisor named no drive yet
            rig.hv.emit(EnospcPause("vm1", "vda"))  # the stale event, handled now
            # No pause message follows it here (a backend that lost it): a look, soon.
            await rig.advance(PAUSE_FOLLOWS_S)
            await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
            await rig.settle()
            assert rig.hv.vms["vm1"].running
            assert rig.ext.calls == 1 and rig.volumes.sizes[VOL] == 384 * MiB
            assert rig.tally.backing_full == 0
            await next_pause_is_the_volumes_own(rig)
            tg.cancel_scope.cancel()
    assert not [e for e in logs if "backing store full" in str(e["event"])]


async def test_the_stop_read_before_our_cont_is_not_a_new_pause() -> None:
    """The bench's finding (stop 42): QMP sends BLOCK_IO_ERROR, then STOP, whose run state
    the backend read from those events. The ENOSPC, handled after the extension landed, is
    resumed (room); the STOP's message, still in the inbox, holds the pause from before that
    ``cont``. Taken as a new pause on the size just resumed on, it was "backing store full":
    a false warning and alert, and the next real pause waited out a backoff step."""
    rig = Rig(poll_interval_s=30.0, full_poll_interval_s=30.0)  # no poll in the way
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    rig.ext.gate = anyio.Event()
    paused = RunState(False, PauseReason.ENOSPC,
                      (DriveIoError("vda", rig.volumes.device_path(VOL), True),))
    reads_at_resume: list[int] = []
    real_resume = rig.hv.resume

    async def noting_resume(vm: str) -> None:
        reads_at_resume.append(rig.hv.drive_reads)
        await real_resume(vm)

    rig.hv.resume = noting_resume  # type: ignore[method-assign]
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            await paused_past_the_end_then_extended(rig)
            reads = rig.hv.drive_reads
            rig.hv.emit(EnospcPause("vm1", "vda"))  # BLOCK_IO_ERROR, then STOP: both stale
            rig.hv.emit(VmPaused("vm1", PauseReason.ENOSPC, paused))
            await until(lambda: rig.hv.resumes == ["vm1"], describe=rig.describe)
            assert reads_at_resume == [reads]  # room from what the task knows: no look
            await rig.settle()
            assert rig.hv.drive_reads == reads  # nor after: the RESUME is the cont's own
            await rig.advance(PAUSE_FOLLOWS_S)  # the pause message came: no safety look
            assert rig.hv.drive_reads == reads
            assert rig.hv.vms["vm1"].running and rig.tally.backing_full == 0
            await next_pause_is_the_volumes_own(rig)
            tg.cancel_scope.cancel()
    assert not [e for e in logs if "backing store full" in str(e["event"])]


async def test_two_chunks_past_the_end_is_never_backing_store_full() -> None:
    rig = Rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 4096 * MiB)})
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        rig.hv.write("vm1", "vda", 450 * MiB)  # needs 256 -> 384 -> 512 (-> 640)
        await until(lambda: rig.hv.resumes == ["vm1"])
        await rig.settle()
        assert rig.volumes.sizes[VOL] >= 512 * MiB and rig.hv.vms["vm1"].running
        assert rig.tally.backing_full == 0
        tg.cancel_scope.cancel()


async def test_full_backing_store_is_never_extended_and_resumes_once_freed() -> None:
    rig = Rig()
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 1024 * MiB)})
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            await until(lambda: rig.state() is ThresholdState.SET)
            rig.hv.write("vm1", "vda", 100 * MiB)  # under the threshold (192 MiB)
            await rig.settle()
            rig.hv.vms["vm1"].drives["vda"].backing_full = True
            rig.hv.write("vm1", "vda", 1 * MiB)  # ENOSPC with 156 MiB free
            # First: room, resumed at once; the write fails again: backing store full. The
            # guest ran between the two pauses (the RESUME came first), so one more resume
            # goes at once; from then on, one per backoff step.
            await until(lambda: rig.tally.backing_full == 1, describe=rig.describe)
            await rig.settle()
            assert rig.hv.resumes == ["vm1", "vm1"] and not rig.hv.vms["vm1"].running
            snap = rig.monitor.snapshot()[0]
            assert snap["paused"] == "enospc, backing store full"
            for _ in range(10):  # 10 s: resumes only per backoff step (1, 2, 4, 8 s)
                await rig.advance(1.0)
            resumes = len(rig.hv.resumes)
            assert 4 <= resumes <= 6, rig.hv.resumes
            assert rig.ext.calls == 0 and rig.volumes.sizes[VOL] == 256 * MiB
            assert rig.tally.backing_full == 1  # one classification
            rig.hv.vms["vm1"].drives["vda"].backing_full = False  # space freed
            for _ in range(20):
                await rig.advance(1.0)
                if rig.hv.vms["vm1"].running:
                    break
            assert rig.hv.vms["vm1"].running
            assert rig.hv.vms["vm1"].drives["vda"].allocation == 101 * MiB
            assert rig.ext.calls == 0 and rig.volumes.sizes[VOL] == 256 * MiB
            assert rig.tally.backing_full == 1
            tg.cancel_scope.cancel()
    warnings = [e for e in logs if e["log_level"] == "warning"
                and "backing store full" in str(e["event"])]
    assert len(warnings) == 1
    assert warnings[0]["vg"] == "vg0" and warnings[0]["drive"] == "vda"
