"""LeaseService on an in-memory area: join, SPM, release, step-down, takeover, fencing."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import pytest

from autoextend.clock import ManualClock, MonotonicClock
from autoextend.errors import NotSpmError
from autoextend.lab.waiting import until
from autoextend.lease.liveness import HostState
from autoextend.lease.service import LeaseService
from autoextend.sectorfakes import MemoryStorage
from autoextend.sectors import StorageError

from .helpers import MAX_HOSTS, STEADY, T, W, memory_area, settings


async def test_single_host_becomes_spm_and_releases() -> None:
    storage = await memory_area()
    # Steady timing: at T = 20 ms a 160 ms loop stall under load lets the host id lapse,
    # and then the release rightly leaves the leader record alone (seen once in CI).
    lease = LeaseService(storage, settings(1, **STEADY), MonotonicClock(), rng=random.Random(1))
    async with lease.joined():
        assert lease.current_spm() is None
        async with lease.spm() as term:
            term.check()
            assert (term.host_id, term.lver) == (1, 1)
            assert lease.current_spm() == (1, 1)
            await until(lambda: lease.stats.renewals >= 2, 50 * STEADY["io_timeout_s"],
                        "two renewals",
                        describe=lambda: lease.stats)
            term.check()  # renewals keep it valid
        with pytest.raises(NotSpmError):
            term.check()
        assert lease.current_spm() is None
        async with lease.spm() as term2:
            assert term2.lver == 2
    assert lease.delta.record is None


async def test_second_host_takes_over_after_release_within_a_renewal_interval() -> None:
    storage = await memory_area()
    clock = MonotonicClock()
    a = LeaseService(storage, settings(1, **STEADY), clock, rng=random.Random(1))
    b = LeaseService(storage, settings(2, **STEADY), clock, rng=random.Random(2))
    got: list[tuple[int, float]] = []
    a_holds = anyio.Event()

    async def contend() -> None:
        await a_holds.wait()
        async with b.spm() as term_b:
            got.append((term_b.lver, clock.now()))

    async with a.joined(), b.joined(), anyio.create_task_group() as tg:
        tg.start_soon(contend)
        async with a.spm() as term_a:
            a_holds.set()
            await anyio.sleep(4 * a.timeouts.io_timeout)  # b contends for 4 T and must not win
            assert got == []  # a holds it
            term_a.check()
            released_at = clock.now()
            a.step_down()
            await anyio.sleep(10)  # cancelled by the step-down
            raise AssertionError("not cancelled")
        assert term_a.ended == "stepped down"
    assert got and got[0][0] == 2
    # The released lease is taken at b's next poll: well before the expiry a crashed holder
    # would make b wait for (a fixed small slack here failed under a CPU hog).
    assert got[0][1] - released_at < a.timeouts.takeover_min


class Cuttable:
    """Storage proxy that fails every I/O after ``cut`` (a host losing its path / crashing)."""

    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner
        self.sector_size = inner.sector_size
        self.size = inner.size
        self.path = inner.path
        self.cut = False

    async def read(self, offset: int, length: int) -> bytes:
        if self.cut:
            raise StorageError("cut", "read", offset, length, "path lost")
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        if self.cut:
            raise StorageError("cut", "write", offset, len(data), "path lost")
        await self.inner.write(offset, data)

    async def close(self) -> None:
        return None


async def test_silent_holder_fences_and_is_taken_over_after_host_dead() -> None:
    storage = await memory_area()
    clock = MonotonicClock()
    a_path = Cuttable(storage)
    a = LeaseService(a_path, settings(1), clock)
    b = LeaseService(storage, settings(2), clock)
    times: dict[str, float] = {}

    a_holds = anyio.Event()

    async def contend() -> None:
        await a_holds.wait()
        async with b.spm() as term:
            times["b_acquired"] = clock.now()
            assert term.lver == 2

    async with b.joined(), a.joined(), anyio.create_task_group() as tg:
        tg.start_soon(contend)
        async with a.spm() as term_a:
            a_path.cut = True
            times["a_last_renewal"] = a.delta.last_renewal
            a_holds.set()
            await anyio.sleep(100)  # cancelled by a's own fence
        times["a_fenced"] = clock.now()
        # Fenced at the expiry by whichever notices it first: the term's guard, or the
        # renewal loop retrying the cut path (beside a CPU hog either can win).
        assert term_a.ended in {"lease may have expired (not renewed in time)",
                                "host id lost: not renewed within the lease expiry"}
        await until(lambda: "b_acquired" in times, 5, "b to take the lease over",
                    describe=lambda: times)
    to = b.timeouts
    assert times["a_fenced"] - times["a_last_renewal"] >= to.lease_expiry
    taken = times["b_acquired"] - times["a_last_renewal"]
    assert taken >= to.takeover_min
    assert taken <= to.takeover_max_fast + 0.1


async def test_fenced_when_renewals_fail() -> None:
    inner = await memory_area()
    clock = MonotonicClock()
    path = Cuttable(inner)
    lease = LeaseService(path, settings(1), clock)
    async with lease.joined():
        async with lease.spm() as term:
            path.cut = True
            await anyio.sleep(20 * T)  # never completes: the fence cancels it
            raise AssertionError("not fenced")
        assert term.ended is not None
        with pytest.raises(NotSpmError):
            term.check()
        assert clock.now() >= term.expiry
        assert lease.stats.renewal_failures >= 1 and lease.stats.fenced >= 1
        assert "expired" in term.ended or "lost" in term.ended
        path.cut = False


async def test_host_states_live_and_unknown() -> None:
    storage = await memory_area()
    clock = MonotonicClock()
    a = LeaseService(storage, settings(1), clock)
    b = LeaseService(storage, settings(2), clock)
    async with a.joined(), b.joined():
        await until(lambda: a.host_states()[2].state is HostState.LIVE, 50 * T,
                    "a to see host 2 live", describe=lambda: a.host_states()[2])
        states = a.host_states()
        assert states[3].state is HostState.FREE
        # renewals keep coming: a newer one than the last seen arrives (no bound on how soon:
        # a loaded machine delays tasks; every 2T when it does not)
        age = a.renewal_age()
        assert age is not None and age >= 0
        last = clock.now() - age

        def renewed_since() -> bool:
            now_age = a.renewal_age()
            # (both instants are read as now - age: T apart is a new renewal, not float noise)
            return now_age is not None and clock.now() - now_age > last + T

        await until(renewed_since, 500 * T, "a renewal after the last one seen",
                    describe=lambda: a.renewal_age())
    assert len(states) == MAX_HOSTS and W > 0


async def test_restarted_holder_is_not_taken_over_on_a_stale_generation() -> None:
    """Host 1 crashes holding the lease and restarts at once (same name, new generation) and
    takes the lease again. Host 2 last read host 1's slot before the restart, so its cached
    record still shows the old generation; that stale mismatch must not count as "the owner's
    host id is gone" (a fresh read shows the new generation, which is the leader's)."""
    storage = await memory_area()
    real = MonotonicClock()
    frozen = ManualClock()  # host 2's clock: it neither renews nor polls unless advanced
    crashed = Cuttable(storage)
    first = LeaseService(crashed, settings(1), real, rng=random.Random(1))
    b = LeaseService(storage, settings(2), frozen, rng=random.Random(2))

    async def advance_until(done: Callable[[], bool]) -> None:
        def step() -> bool:  # host 2's time moves only while the test waits for it
            if done():
                return True
            frozen.advance(T / 4)
            return False

        await until(step, 5, "host 2 to get there on its manual clock",
                    describe=lambda: b.stats)

    async with anyio.create_task_group() as tg:
        joined_b = anyio.Event()

        async def run_b() -> None:
            async with b.joined():
                joined_b.set()
                await anyio.sleep_forever()

        async with first.joined(), first.spm() as old_term:
            tg.start_soon(run_b)
            await advance_until(joined_b.is_set)
            await advance_until(lambda: b.stats.renewals >= 1)  # b has seen host 1's slot
            assert b.monitor.record(1) is not None
            old_generation = old_term.generation
            assert b.monitor.record(1).generation == old_generation  # type: ignore[union-attr]
            crashed.cut = True  # crash: nothing more reaches the disk
        second = LeaseService(storage, settings(1), real, rng=random.Random(3))
        async with second.joined(), second.spm() as term:
            assert term.generation != old_generation
            taken = False
            with anyio.move_on_after(20 * T):
                async with b.spm():
                    taken = True
            assert not taken, "host 2 took the lease of a live holder"
            term.check()
        tg.cancel_scope.cancel()
