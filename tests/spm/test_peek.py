"""The ring peeker (``spm/peek.py``) and the cadence formula (``spm/cadence.py``).

The peeker only decides *when* the server reads a ring sector early: a request is served
with a working peeker, with one that cannot start, and with one that never reports a
change (the server's own reads still find it)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from autoextend.directio import DirectReader, DirectStorage, open_storage
from autoextend.sectors import StorageError
from autoextend.spm import watch
from autoextend.spm.cadence import (
    CostModel,
    cold_p99_s,
    idle_cpu_share,
    live_interval_window,
    wakes_per_s,
)
from autoextend.spm.config import MailboxSettings
from autoextend.spm.host import HostMailbox
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.peek import DEFER_FRACTION, PeekSource, changed_hosts, plan_wake
from autoextend.spm.server import SpmMailServer
from autoextend.spm.watch import cadence
from autoextend.spm.wire import Status

from .pool import VG, MiB, Pool, vol

DEFAULTS = MailboxSettings()

# Pure parts.

groups = st.lists(st.tuples(st.floats(0.0, 100.0), st.floats(0.001, 10.0)),
                  min_size=1, max_size=4)


@given(groups)
def test_a_wake_reads_what_is_due_and_nothing_later_than_its_slack(
    plan: list[tuple[float, float]]
) -> None:
    nexts = [t for t, _ in plan]
    intervals = [i for _, i in plan]
    wake, due = plan_wake(nexts, intervals)
    assert wake >= min(nexts) - 1e-9  # never before anything is due
    assert due and wake in [nexts[i] for i in due]
    assert set(due) == {i for i, t in enumerate(nexts) if t <= wake + 1e-6}
    for i in due:  # read at most its slack late
        assert wake <= nexts[i] + DEFER_FRACTION * intervals[i] + 1e-6


def test_the_sweep_waits_for_the_next_live_sweep_read() -> None:
    assert plan_wake([1.00, 1.04], [0.49, 0.045]) == (1.04, [0, 1])  # one wake, one read
    assert plan_wake([1.00, 1.20], [0.49, 0.045]) == (1.00, [0])  # too far: on its own
    with pytest.raises(ValueError, match="no group"):
        plan_wake([], [])


def test_changed_hosts_reports_new_and_changed_sectors_only() -> None:
    last: dict[int, bytes] = {3: b"a" * 512}
    data = b"a" * 512 + b"b" * 512
    assert changed_hosts(data, 3, 512, last) == [4]  # never seen: reported
    assert changed_hosts(data, 3, 512, last) == []
    assert changed_hosts(b"c" * 512 + b"b" * 512, 3, 512, last) == [3]


@given(st.floats(0.01, 0.2))
def test_the_formula_holds_inside_its_window(interval: float) -> None:
    model = CostModel()
    sweep = cadence(250 * 512, DEFAULTS.ring_sweep_bytes_per_s, DEFAULTS.poll_interval_s)
    window = live_interval_window(model, 0.004, 0.060)
    assert window is not None
    low, high = window
    cpu_ok = idle_cpu_share(model, interval, sweep) <= 0.004 + 1e-12
    p99_ok = cold_p99_s(model, interval) <= 0.060 + 1e-12
    if low <= interval <= high and interval <= DEFER_FRACTION * sweep:
        assert cpu_ok and p99_ok
    if interval < low * (1 - 1e-9):
        assert not cpu_ok
    if interval > high * (1 + 1e-9):
        assert not p99_ok


def test_the_defaults_come_from_the_formula() -> None:
    """45 ms: inside the window for 0.4 % of a core and 60 ms at p99, and the sweep shares
    its wake-ups; the idle reads stay under vdsm's (tests/spm/test_live.py)."""
    window = live_interval_window(CostModel(), 0.004, 0.060)
    assert window is not None
    assert window[0] <= DEFAULTS.live_poll_interval_s <= window[1]
    sweep = cadence(250 * 512, DEFAULTS.ring_sweep_bytes_per_s, DEFAULTS.poll_interval_s)
    assert wakes_per_s(DEFAULTS.live_poll_interval_s, sweep) == 1 / 0.045
    # a read too dear leaves no window at all
    assert live_interval_window(CostModel(read_cpu_s=0.3e-3), 0.004, 0.060) is None


@given(st.integers(1, 2000), st.floats(1.0, 86400.0))
def test_the_box_scan_reads_in_batches_and_still_covers_every_box(
    max_hosts: int, interval: float
) -> None:
    batch = watch.scan_batch(max_hosts, interval)
    assert 1 <= batch <= max_hosts
    period = batch * interval / max_hosts  # seconds between two batches
    assert batch == 1 or period <= watch.FULL_SCAN_BATCH_S + 1e-9
    # every box once per interval, give or take one batch's period
    assert period <= max(watch.FULL_SCAN_BATCH_S, interval / max_hosts) + 1e-9


# With real O_DIRECT storage and the real clock.


@pytest.fixture
def area() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="autoextend-peek-", dir="/var/tmp") as tmp:
        yield Path(tmp) / "area.img"


SETTINGS = MailboxSettings(max_hosts=8, full_scan_interval_s=86400.0,
                           ring_retry_initial_s=600.0, ring_retry_max_s=600.0)


@asynccontextmanager
async def serving(path: Path, peek: PeekSource | bool,
                  live: set[int]) -> AsyncIterator[tuple[SpmMailServer, HostMailbox]]:
    layout = MailboxLayout(0, 512, SETTINGS.max_hosts)
    with open(path, "wb") as f:
        f.write(bytes(layout.end))
    storage = await open_storage(str(path), 512)
    pool = Pool(settings=SETTINGS)  # its volume backend and authority
    server = SpmMailServer(storage, pool.backend, [VG], layout=layout,
                           authority=pool.authority, settings=SETTINGS,
                           live_hosts=lambda: live, peek=peek)
    host = HostMailbox(storage, layout, 3, SETTINGS)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            await tg.start(host.run)
            yield server, host
            tg.cancel_scope.cancel()
    finally:
        await storage.close()


async def test_the_peeker_wakes_the_server_for_a_ring(area: Path) -> None:
    async with serving(area, True, {3}) as (server, host):
        assert server.peek_stats is not None
        with anyio.fail_after(30):
            reply = await host.request(vol(1), 200 * MiB)
        assert reply.status is Status.OK
        assert server.counters.peek_nudges >= 1
        assert server.peek_stats.reads >= 1 and server.peek_stats.errors == 0
    assert server.peek_stats is None  # stopped with the server


async def test_a_peeker_that_cannot_start_leaves_the_server_reading_on_its_own(
    area: Path
) -> None:
    def broken() -> DirectReader:
        raise StorageError(str(area), "open", 0, 0, "no such device")

    with capture_logs() as logs:
        async with serving(area, broken, {3}) as (server, host):
            with anyio.fail_after(30):
                reply = await host.request(vol(1), 200 * MiB)
            assert reply.status is Status.OK
            assert server.counters.peek_errors == 1 and server.peek_stats is None
    stopped = [e for e in logs if e["event"].startswith("ring peeker stopped")]
    assert len(stopped) == 1 and "no such device" in stopped[0]["error"]


class BlindReader:
    """Reads zeros whatever the disk holds: a peeker that never sees a change."""

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)

    def close(self) -> None:
        pass


async def test_a_blind_peeker_costs_latency_never_a_request(
    area: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "PEEK_FALLBACK_S", 0.5)  # the server's own reads, sooner
    async with serving(area, BlindReader, {3}) as (server, host):
        with anyio.fail_after(30):
            reply = await host.request(vol(1), 200 * MiB)
        assert reply.status is Status.OK
        assert server.counters.peek_nudges == 0  # found by the server's own sweep
        assert server.counters.sweeps >= 1


async def test_the_direct_reader_reads_what_was_written(area: Path) -> None:
    with open(area, "wb") as f:
        f.write(bytes(8192))
    storage = await open_storage(str(area), 512)
    try:
        assert isinstance(storage, DirectStorage)
        await storage.write(1024, b"x" * 512)
        reader = storage.open_reader()
        try:
            assert reader.read(512, 1024) == bytes(512) + b"x" * 512
            assert reader.read(0, 8192)[1024:1536] == b"x" * 512  # a larger buffer
            with pytest.raises(StorageError, match="whole 512-byte sectors"):
                reader.read(1, 512)
        finally:
            reader.close()
        with pytest.raises(StorageError, match="closed"):
            reader.read(0, 512)
    finally:
        await storage.close()
