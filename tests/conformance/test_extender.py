"""One contract for every Extender: the monitor's fake, the local extender (over in-memory
volumes and over the loop backend) and the mailbox extender (through a real SPM mail server
and host mailbox on in-memory sectors).

The contract: an extension gets the volume to at least the size asked, rounded up to the
extent, visible on this host; it never shrinks; expected failures come back as outcomes with
a machine-readable code (``not_found`` rejected, ``vg_full`` failed), never as exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio

from autoextend.monitor.protocols import ExtendOutcome, OutcomeCode, OutcomeKind
from autoextend.volumes import VolumeRef
from tests.conformance.extender_subjects import ExtenderSubject
from tests.lvm.support import MiB

Factory = Callable[[], contextlib.AbstractAsyncContextManager[ExtenderSubject]]


def _rounded(subject: ExtenderSubject, size: int) -> int:
    return -(-size // subject.extent) * subject.extent


async def test_extends_to_at_least_the_size_and_this_host_sees_it(
    extender_subject: Factory,
) -> None:
    async with extender_subject() as subject:
        ref = await subject.create("v1", 8 * MiB)
        outcome = await subject.extender.extend(ref, 17 * MiB)
        seen = await subject.seen.size(ref)
    assert outcome.kind is OutcomeKind.OK and outcome.ok, outcome
    assert outcome.size == seen == _rounded(subject, 17 * MiB)


async def test_a_smaller_size_is_a_no_op(extender_subject: Factory) -> None:
    async with extender_subject() as subject:
        ref = await subject.create("v1", 16 * MiB)
        outcome = await subject.extender.extend(ref, 4 * MiB)
        seen = await subject.seen.size(ref)
    assert outcome.ok, outcome
    assert outcome.size == seen == 16 * MiB


async def test_a_missing_volume_is_rejected(extender_subject: Factory) -> None:
    async with extender_subject() as subject:
        await subject.create("v1", 8 * MiB)
        outcome = await subject.extender.extend(VolumeRef(subject.vg, "absent"), 16 * MiB)
    assert (outcome.kind, outcome.code) == (OutcomeKind.REJECTED, OutcomeCode.NOT_FOUND), outcome
    assert outcome.reason


async def test_a_full_pool_fails_with_vg_full_and_keeps_the_size(
    extender_subject: Factory,
) -> None:
    async with extender_subject() as subject:
        ref = await subject.create("v1", 8 * MiB)
        await subject.limit(subject.vg, 32 * MiB)
        outcome = await subject.extender.extend(ref, 1 << 30)
        seen = await subject.seen.size(ref)
        await subject.limit(subject.vg, None)
        after = await subject.extender.extend(ref, 12 * MiB)
    assert (outcome.kind, outcome.code) == (OutcomeKind.FAILED, OutcomeCode.VG_FULL), outcome
    assert seen == 8 * MiB
    assert after.ok and after.size == _rounded(subject, 12 * MiB), after


async def test_concurrent_extends_all_succeed_and_end_at_the_maximum(
    extender_subject: Factory,
) -> None:
    sizes = [(index * 3 % 7 + 1) * 4 * MiB for index in range(7)]
    outcomes: list[ExtendOutcome] = []
    async with extender_subject() as subject:
        refs = [await subject.create("v1", 4 * MiB), await subject.create("v2", 4 * MiB)]

        async def extend(ref: VolumeRef, size: int) -> None:
            outcomes.append(await subject.extender.extend(ref, size))

        async with anyio.create_task_group() as tg:
            for ref in refs:
                for size in sizes:
                    tg.start_soon(extend, ref, size)
        seen = [await subject.seen.size(ref) for ref in refs]
    assert all(outcome.ok for outcome in outcomes), outcomes
    assert seen == [max(sizes)] * 2
