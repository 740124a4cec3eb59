"""An I/O error on the cluster agent's first lease or mailbox I/O does not end it: the join is
retried with backoff, logged once as a warning and counted (fault-injecting storage)."""

from __future__ import annotations

import anyio
import pytest
from structlog.testing import capture_logs

from autoextend.clock import MonotonicClock
from autoextend.cluster import ClusterAgent
from autoextend.lab.waiting import until
from autoextend.lease.errors import NotFormatted
from autoextend.lease.layout import LEASE_AREA_SIZE
from autoextend.sectorfakes import FaultPlan, FaultyStorage, MemoryStorage
from autoextend.sectors import StorageError
from tests.doubles import no_spm_backend
from tests.lease.helpers import T, memory_area, settings

from .fakes import FAST
from .pool import VG, Pool

MAILBOX = FAST.model_copy(update={"offset": None})  # after the lease area
EVENT = "joining the pool failed on an I/O error; retrying"



def agent(pool: Pool) -> ClusterAgent:
    return ClusterAgent(settings(1, path="/faulty/area"), MAILBOX, (VG,), pool.backend,
                        no_spm_backend, MonotonicClock())


@pytest.mark.parametrize("plan", [
    FaultPlan(read_error_prob=1.0),                                 # every read fails
    FaultPlan(timeout_prob=1.0),                                    # every I/O times out
    FaultPlan(seed=3, read_error_prob=0.5, torn_prob=0.5),          # some of each
], ids=["read-errors", "timeouts", "mixed"])
async def test_io_errors_while_joining_are_retried_with_backoff(plan: FaultPlan) -> None:
    storage = await memory_area()
    faulty = FaultyStorage(storage, plan, MonotonicClock(), io_timeout=T)
    ca = agent(Pool())
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ca.run_on, faulty)
            await until(lambda: ca.join_failures >= 3, 30, "three failed joins",
                        describe=lambda: (ca.join_failures, faulty.counts))
            assert ca.mailbox is not None and not ca._joined_event().is_set()
            faulty.plan = FaultPlan()  # the path comes back
            with anyio.fail_after(30):
                await ca.wait_joined()
            assert ca.status()["join_failures"] == ca.join_failures >= 3
            tg.cancel_scope.cancel()
    failed = [e for e in logs if e["event"] == EVENT]
    assert [e["log_level"] for e in failed].count("warning") == 1
    assert len(failed) == ca.join_failures
    delays = [e["retry_in_s"] for e in failed]
    assert delays[:3] == [T, 2 * T, 4 * T] and max(delays) <= 6 * T
    assert any(e["event"] == "joined the pool" for e in logs)


class MailboxFailsFirst:
    """The metadata area, but the first ``n`` I/Os past the lease area (the mailbox) fail."""

    def __init__(self, inner: MemoryStorage, n: int) -> None:
        self.inner, self.left = inner, n
        self.sector_size, self.size, self.path = inner.sector_size, inner.size, "<area>"

    def _check(self, offset: int) -> None:
        if offset >= LEASE_AREA_SIZE and self.left > 0:
            self.left -= 1
            raise StorageError(self.path, "write", offset, 512, "I/O error (injected)")

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset)
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        self._check(offset)
        await self.inner.write(offset, data)

    async def close(self) -> None:
        await self.inner.close()


async def test_an_io_error_on_the_mailbox_start_is_retried_too() -> None:
    area = MailboxFailsFirst(await memory_area(), 2)
    ca = agent(Pool())
    async with anyio.create_task_group() as tg:
        tg.start_soon(ca.run_on, area)
        with anyio.fail_after(30):
            await ca.wait_joined()
        tg.cancel_scope.cancel()
    assert ca.join_failures == 2 and area.left == 0


async def test_what_is_not_an_io_error_still_ends_the_agent() -> None:
    blank = MemoryStorage(LEASE_AREA_SIZE + (1 << 20), 512)  # never formatted
    ca = agent(Pool())
    with pytest.raises(NotFormatted):
        with anyio.fail_after(30):
            await ca.run_on(blank)
    assert ca.join_failures == 0
