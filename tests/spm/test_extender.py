"""MailboxExtender: request through the SPM, refresh on this host, verify, outcome."""

from __future__ import annotations

import anyio

from autoextend.monitor.protocols import Extender, OutcomeKind
from autoextend.spm.extender import MailboxExtender
from autoextend.volumes import VolumeRef

from .fakes import RecordingBackend
from .pool import MiB, Pool, serving, vol


async def test_ok_refreshes_and_verifies() -> None:
    pool = Pool()
    async with serving(pool, 1) as (_, (host,)):
        extender: Extender = MailboxExtender(host, pool.backend)
        outcome = await extender.extend(vol(1), 200 * MiB)
    assert outcome.kind is OutcomeKind.OK and outcome.size == 200 * MiB
    assert pool.backend.refreshed == [vol(1)]


async def test_rejected_and_failed_carry_the_reason() -> None:
    pool = Pool()
    pool.backend.capacity = sum(pool.backend.sizes.values())
    async with serving(pool, 1) as (_, (host,)):
        extender = MailboxExtender(host, pool.backend)
        rejected = await extender.extend(VolumeRef("elsewhere", "lv1"), 200 * MiB)
        failed = await extender.extend(vol(1), 200 * MiB)
    assert rejected.kind is OutcomeKind.REJECTED and "not in the pool" in rejected.reason
    assert failed.kind is OutcomeKind.FAILED and failed.reason.startswith("no_space")
    assert pool.backend.refreshed == []


async def test_size_not_visible_after_refresh_is_a_failure() -> None:
    pool = Pool()
    stale_host_view = RecordingBackend({vol(1): 100 * MiB})  # this host never sees the growth
    async with serving(pool, 1) as (_, (host,)):
        outcome = await MailboxExtender(host, stale_host_view).extend(vol(1), 200 * MiB)
    assert outcome.kind is OutcomeKind.FAILED and "sees" in outcome.reason
    assert outcome.size == 100 * MiB


async def test_no_spm_times_out_as_failed() -> None:
    pool = Pool()
    async with anyio.create_task_group() as tg:
        host = pool.host(1)
        await tg.start(host.run)
        outcome = await MailboxExtender(host, pool.backend, timeout_s=0.05).extend(vol(1), 1)
        tg.cancel_scope.cancel()
    assert outcome.kind is OutcomeKind.FAILED and "no reply from the SPM" in outcome.reason
