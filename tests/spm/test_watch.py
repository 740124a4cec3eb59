"""The ring watch's pure parts: cadence math and change tracking (hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.spm.errors import CorruptSector
from autoextend.spm.watch import RingTracker, cadence, ring_key
from autoextend.spm.wire import Ring, encode_ring


@given(st.integers(512, 8 << 20), st.integers(4096, 64 << 20), st.floats(0.001, 10.0))
def test_cadence_keeps_the_byte_rate_and_the_poll(read_bytes: int, rate: int,
                                                  poll: float) -> None:
    interval = cadence(read_bytes, rate, poll)
    assert interval >= poll
    assert read_bytes / interval <= rate * (1 + 1e-9)
    if read_bytes / rate > poll:
        assert interval == read_bytes / rate


@given(st.lists(st.tuples(st.integers(1, 4), st.booleans()), max_size=200))
def test_every_ring_written_is_seen_at_the_next_read(ops: list[tuple[int, bool]]) -> None:
    """Hosts ring (each ring sector has one writer and its count only grows) while the SPM
    reads ring sectors at arbitrary moments: a read reports a change exactly when the host
    rang since the SPM's previous read of that sector."""
    tracker = RingTracker(hot_window_s=1.0)
    disk = {h: bytes(512) for h in range(1, 5)}
    counts = dict.fromkeys(disk, 0)
    rang_since_read = dict.fromkeys(disk, False)
    for host, is_ring in ops:
        if is_ring:
            counts[host] += 1
            disk[host] = encode_ring(512, Ring(host, 3, counts[host]))
            rang_since_read[host] = True
        else:
            key, ring = ring_key(disk[host], host)
            assert isinstance(ring, Ring) and ring.count == counts[host]
            assert tracker.update(host, key) == rang_since_read[host]
            rang_since_read[host] = False


def test_a_changed_corrupt_sector_counts_as_a_change() -> None:
    tracker = RingTracker(hot_window_s=1.0)
    first, err = ring_key(b"\x01" * 512, 2)
    assert isinstance(err, CorruptSector) and tracker.update(2, first)
    assert not tracker.update(2, ring_key(b"\x01" * 512, 2)[0])
    assert tracker.update(2, ring_key(b"\x02" * 512, 2)[0])


@given(st.lists(st.tuples(st.integers(1, 50), st.floats(0, 100)), max_size=50),
       st.floats(0, 200), st.floats(0.1, 60))
def test_hot_hosts_are_those_active_within_the_window(
    marks: list[tuple[int, float]], now: float, window: float
) -> None:
    tracker = RingTracker(window)
    last: dict[int, float] = {}
    for host, when in marks:
        tracker.mark_active(host, when)
        last[host] = when
    assert tracker.hot(now) == sorted(h for h, t in last.items() if t >= now - window)
