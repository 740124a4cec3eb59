"""A storage outage logs each warning once, plus a count (logs.Repeats).

The real cluster agent (host id lease, SPM candidacy and term, SPM mail server, host mailbox)
runs on the metadata area through an outage switch (every read and write fails while it is
down). Two ways, each proving one thing:

* at the **shipped timing** (io_timeout 10 s: renewal and rejoin retried every 0.5 s) on a
  manual clock, so a 60 s outage (and a 180 s one, long enough to lose the host id and fail
  the rejoin for 40 s) takes a second or two of test time;
* on a **real O_DIRECT file** in real time at a short lease timing, with an extension
  request waiting in the host mailbox through the outage.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from autoextend.clock import Clock, ManualClock, MonotonicClock
from autoextend.cluster import ClusterAgent
from autoextend.directio import open_storage
from autoextend.lab.waiting import until
from autoextend.lease.area import format_area
from autoextend.lease.config import LeaseSettings
from autoextend.lease.layout import LeaseLayout
from autoextend.logs import Repeats, get_logger
from autoextend.sectorfakes import MemoryStorage
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm.config import MailboxSettings, mailbox_base
from autoextend.spm.layout import MailboxLayout
from autoextend.volumes import ExtendResult, VolumeRef

MAX_HOSTS = 8
MiB = 1 << 20
VOLUME = VolumeRef("vg0", "lv1")
SUMMARY = "repeated warning cleared"


class Outage:
    """The metadata area, with a switch: while ``down``, every read and write fails."""

    def __init__(self, inner: SectorStorage) -> None:
        self.inner, self.down, self.failed = inner, False, 0
        self.sector_size, self.size, self.path = inner.sector_size, inner.size, inner.path

    def _check(self, op: str, offset: int, length: int) -> None:
        if self.down:
            self.failed += 1
            raise StorageError(self.path, op, offset, length, "I/O error (injected outage)")

    async def read(self, offset: int, length: int) -> bytes:
        self._check("read", offset, length)
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        self._check("write", offset, len(data))
        await self.inner.write(offset, data)

    async def close(self) -> None:
        await self.inner.close()


class Volumes:
    """The SPM's volume backend: sizes in memory (the SPM side is not what is tested)."""

    def __init__(self) -> None:
        self.sizes = {VOLUME: 64 * MiB}

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        changed = size > self.sizes[volume]
        self.sizes[volume] = max(self.sizes[volume], size)
        return ExtendResult(self.sizes[volume], changed)

    async def refresh(self, volume: VolumeRef) -> int:
        return self.sizes[volume]

    async def size(self, volume: VolumeRef) -> int:
        return self.sizes[volume]

    async def aclose(self) -> None:
        pass

    def lookup(self, path: str) -> VolumeRef | None:
        return None


def agent_on(clock: Clock, lease: LeaseSettings, mailbox: MailboxSettings) -> ClusterAgent:
    volumes = Volumes()
    return ClusterAgent(lease, mailbox, ("vg0",), volumes,  # type: ignore[arg-type]
                        lambda term: volumes, clock)  # type: ignore[arg-type,return-value]


def warnings_by_cause(logs: Sequence[Mapping[str, Any]]) -> collections.Counter[tuple[str, str, str]]:
    return collections.Counter((e.get("component", ""), e["log_level"], e["event"])
                               for e in logs if e["log_level"] in ("warning", "error"))


def check_once_then_counted(logs: Sequence[Mapping[str, Any]]) -> None:
    """Each (component, level, event) once; each cause that repeated has its count line."""
    found = warnings_by_cause(logs)
    assert found, "the outage logged no warning at all"
    assert max(found.values()) == 1, {k: v for k, v in found.items() if v > 1}
    debug_repeats = collections.Counter(
        (e.get("component", ""), e["event"]) for e in logs
        if e["log_level"] == "debug" and "repeats" in e)
    summaries = {(e.get("component", ""), e["warning"]): e["repeats"]
                 for e in logs if e["event"] == SUMMARY}
    for (component, event), count in debug_repeats.items():
        assert summaries.get((component, event), 0) >= count + 1, (component, event, count)


async def tick(clock: ManualClock, seconds: float, step: float = 0.025) -> None:
    """Advance manual time in poll-sized steps, letting every task run after each step."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()


# Slow (the manual clock is ticked through minutes of lease time), but CPU only.
@pytest.mark.slow
@pytest.mark.cpu
@pytest.mark.parametrize("outage_s", [60.0, 180.0])
async def test_an_outage_at_the_shipped_timing_logs_each_warning_once(outage_s: float) -> None:
    lease = LeaseSettings(path="/outage/area", host_id=1, host_name="h1", max_hosts=MAX_HOSTS)
    mailbox = MailboxSettings(max_hosts=MAX_HOSTS)
    assert lease.io_timeout_s == 10.0  # the shipped timing: retries every 0.5 s
    layout = MailboxLayout(mailbox_base(mailbox, 0), 512, MAX_HOSTS)
    memory = MemoryStorage(layout.end, 512)
    await format_area(memory, LeaseLayout(0, 512, MAX_HOSTS), lease.io_timeout_s)
    storage = Outage(memory)
    clock = ManualClock()
    agent = agent_on(clock, lease, mailbox)
    async with anyio.create_task_group() as tg:
        tg.start_soon(agent.run_on, storage)
        for _ in range(600):  # the join and the SPM election: about a minute of lease time
            await tick(clock, 1.0)
            if agent.status()["is_spm"]:
                break
        assert agent.status()["is_spm"], agent.status()
        with capture_logs() as logs:
            storage.down = True
            await tick(clock, outage_s)
            storage.down = False
            during = len(logs)
            await tick(clock, 300.0)  # the way back: rejoin, a new term
        assert agent.status()["is_spm"] and agent.status()["lease_health"] == "ok"
        tg.cancel_scope.cancel()
    assert storage.failed > 100  # many retries went by ...
    shown = sum(1 for e in logs[:during] if e["log_level"] != "debug")
    print(f"outage {outage_s:g} s: {storage.failed} failed I/Os, {shown} lines at info and"
          f" above during it, warnings: {dict(warnings_by_cause(logs))}")
    check_once_then_counted(logs)  # ... and each cause was logged once, then counted
    events = {e["event"] for e in logs}
    assert "host id renewal failed" in events
    if outage_s > 80 + 60:  # past the lease expiry (8 T) and the watchdog's W: lost, rejoined
        assert {"host id lost", "host id rejoin failed"} <= events
        (rejoin,) = [e for e in logs if e["event"] == SUMMARY
                     and e["warning"] == "host id rejoin failed"]
        assert rejoin["repeats"] >= 20 and rejoin["duration_s"] > 10  # 2 a second, counted


@contextmanager
def area_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "area"
    with path.open("wb") as f:
        f.truncate(8 * MiB)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.cpu
async def test_an_outage_on_a_real_o_direct_area_logs_each_warning_once(
    lab_tmp_path: Path,
) -> None:
    """Real time, real O_DIRECT I/O; the lease timing is short (T = 0.1 s) so that the
    outage (30 T: renewals fail, the host id is lost, rejoins fail) takes seconds."""
    t = 0.1
    lease = LeaseSettings(path="/outage/area", host_id=1, host_name="h1", max_hosts=MAX_HOSTS,
                          io_timeout_s=t, watchdog_fire_timeout_s=2 * t)
    mailbox = MailboxSettings(max_hosts=MAX_HOSTS, poll_interval_s=0.01,
                              reply_poll_interval_s=0.01, reply_poll_max_s=0.05,
                              request_timeout_s=600.0)
    with area_file(lab_tmp_path) as path:  # /var/tmp: O_DIRECT does not work on tmpfs
        direct = await open_storage(str(path), io_timeout=t)
        try:
            await format_area(direct, LeaseLayout(0, direct.sector_size, MAX_HOSTS), t)
            storage = Outage(direct)
            agent = agent_on(MonotonicClock(), lease, mailbox)
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.run_on, storage)
                await until(lambda: agent.status()["is_spm"], 120, "SPM",
                            describe=agent.status)
                with capture_logs() as logs:
                    storage.down = True
                    failed_at_start = storage.failed
                    # an extension request waits in the host mailbox through the outage
                    outcome: list[Any] = []

                    async def ask() -> None:
                        outcome.append(await agent.extender().extend(VOLUME, 128 * MiB))

                    tg.start_soon(ask)
                    await anyio.sleep(30 * t)  # time is the subject: the outage lasts 30 T
                    storage.down = False
                    await until(lambda: outcome and agent.status()["is_spm"]
                                and agent.status()["lease_health"] == "ok", 120,
                                "the way back: rejoined, SPM again, the request served",
                                describe=agent.status)
                tg.cancel_scope.cancel()
            assert storage.failed - failed_at_start > 50
            assert "host id lost" in {e["event"] for e in logs}
            check_once_then_counted(logs)
        finally:
            await direct.close()


def test_repeats_logs_once_escalates_once_and_counts() -> None:
    clock = ManualClock()
    with capture_logs() as logs:
        repeats = Repeats(get_logger("test"), clock.now, remind_s=60.0)
        for i in range(10):
            repeats.report("warning" if i < 5 else "error", "path failed", error=f"e{i}")
            clock.advance(1.0)
        assert repeats.active("path failed") == 10
        repeats.clear("path failed")
        repeats.clear("path failed")  # idempotent
        repeats.warning("once only")
        repeats.clear("once only")    # came once: no count line
    shown = [(e["log_level"], e["event"], e.get("repeats")) for e in logs
             if e["log_level"] != "debug"]
    assert shown == [("warning", "path failed", None), ("error", "path failed", 6),
                     ("info", SUMMARY, 10), ("warning", "once only", None)]
    (summary,) = [e for e in logs if e["event"] == SUMMARY]
    assert summary["warning"] == "path failed" and summary["last_error"] == "e9"
    assert summary["duration_s"] == 10.0
    assert len([e for e in logs if e["log_level"] == "debug"]) == 8


def test_repeats_reminds_while_a_cause_lasts() -> None:
    clock = ManualClock()
    with capture_logs() as logs:
        repeats = Repeats(get_logger("test"), clock.now, remind_s=600.0)
        for _ in range(2 * 1200 + 1):  # 20 minutes at 2 a second
            repeats.warning("rejoin failed", error="EIO")
            clock.advance(0.5)
    reminders = [e for e in logs if e["event"] == "repeated warning continues"]
    assert [(e["repeats"], e["duration_s"]) for e in reminders] == [(1201, 600.0),
                                                                   (2401, 1200.0)]
    assert [e["log_level"] for e in logs if e["log_level"] != "debug"] == ["warning"] * 3


class StartupFaults(Outage):
    """Fails the SPM's start-up read of every host's reply boxes (one read longer than one
    box, at the first box) ``failures`` times; a host's read of its own box still works."""

    def __init__(self, inner: SectorStorage, layout: MailboxLayout, failures: int) -> None:
        super().__init__(inner)
        self.layout, self.failures = layout, failures

    async def read(self, offset: int, length: int) -> bytes:
        if (self.failures and offset == self.layout.reply_offset(1)
                and length > self.layout.reply_box_bytes):
            self.failures -= 1
            raise StorageError(self.path, "read", offset, length, "I/O error (injected)")
        return await self.inner.read(offset, length)


async def test_an_spm_whose_start_up_read_fails_retries_and_serves() -> None:
    """The metadata area errors just as this host takes the SPM role: the mail server's
    start-up read of the reply boxes fails. Before, the StorageError left the term and ended
    the whole agent (seen as a 1-in-6 failure of the real-time outage test above, when the
    outage began in the start-up). Now the start-up is retried with a backoff while the term
    holds: one warning, the role kept, the request served once the area answers again."""
    lease = LeaseSettings(path="/outage/area", host_id=1, host_name="h1", max_hosts=MAX_HOSTS)
    mailbox = MailboxSettings(max_hosts=MAX_HOSTS)
    layout = MailboxLayout(mailbox_base(mailbox, 0), 512, MAX_HOSTS)
    memory = MemoryStorage(layout.end, 512)
    await format_area(memory, LeaseLayout(0, 512, MAX_HOSTS), lease.io_timeout_s)
    storage = StartupFaults(memory, layout, failures=3)
    clock = ManualClock()
    agent = agent_on(clock, lease, mailbox)
    outcome: list[Any] = []
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent.run_on, storage)

            async def ask() -> None:
                outcome.append(await agent.extender().extend(VOLUME, 128 * MiB))

            for _ in range(600):  # the join, the election, three failed starts
                await tick(clock, 1.0)
                if agent.status()["is_spm"]:
                    break
            tg.start_soon(ask)
            for _ in range(300):
                await tick(clock, 1.0)
                if outcome:
                    break
            tg.cancel_scope.cancel()
    assert storage.failures == 0
    assert outcome and outcome[0].ok, outcome
    events = [e["event"] for e in logs]
    retry = "SPM mail server could not start on an I/O error; retrying"
    assert events.count(retry) == 3
    assert [e["log_level"] for e in logs if e["event"] == retry] == ["warning", "debug", "debug"]
    assert "SPM mail server started" in events
    assert agent.terms == 1  # the role was kept through the failed starts
