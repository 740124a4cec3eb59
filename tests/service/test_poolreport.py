"""``pool status`` without storage: the liveness rule and the report (``poolreport.py``,
pure) over readings built by hand, and this host's summary (``hostsummary.py``)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend import __version__, hostsummary
from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import VgFigures
from autoextend.capacity.record import VgRecord
from autoextend.clock import ManualClock, MonotonicClock
from autoextend.monitor.observer import ExtendFinished
from autoextend.monitor.protocols import OutcomeKind
from autoextend.poolreport import combine, lines
from autoextend.poolview import Leader, Reading, Slot, Watch, observe
from autoextend.spm import summary
from autoextend.spm.errors import CorruptSector
from autoextend.spm.summary import HostFacts, PausedVm
from autoextend.volumes import VolumeRef
from tests.hypo import examples

T = {"io_timeout_s": 0.5, "watchdog_fire_timeout_s": 3.0}
GIB = 1 << 30


def slot(host: int, generation: int, *, free: bool = False) -> Slot:
    return Slot(host, bytes([host, generation & 0xFF]) * 256, free, f"host-{host}",
                generation, 0.5)


def rec(host: int, generation: int, peers: dict[int, tuple[str, int]] | None = None,
        **facts: Any) -> summary.SummaryRecord:
    return summary.make_record(host, "native", generation, 5, 1_000_000, HostFacts(**facts),
                               peers or {})


def reading(watches: dict[int, Watch], records: dict[int, Any], observed: float = 1.5,
            vg: Any = None) -> Reading:
    return Reading(engine="native", watches=watches, observed_s=observed,
                   leader=Leader(2, 7), records=records, vg=vg, wall_us=3_000_000,
                   now=100.0, local_host=1, timeouts=T)


def test_a_silent_host_is_dead_when_a_live_host_says_so() -> None:
    watches = {1: Watch(slot(1, 10), True, 99.5), 2: Watch(slot(2, 20), True, 99.0),
               3: Watch(slot(3, 30), False)}
    records = {1: rec(1, 10, {3: ("dead", 30)}, vms=1, drives=2, extends_hour=4,
                      last_extend_ms=250, paused=(PausedVm("vm1", "enospc"),),
                      version="0.1.0"),
               2: rec(2, 20, {3: ("fail", 30)}), 3: rec(3, 30)}
    vg = VgRecord(2, 9, (VgFigures("demo", 10 * GIB, GIB // 2),))
    report = combine(reading(watches, records, vg=vg), CapacitySettings())
    hosts = {h["host_id"]: h for h in report["hosts"]}
    assert hosts[1]["state"] == "live" and hosts[1]["renewal_age_s"] == 0.5
    assert hosts[3]["state"] == "dead" and hosts[3]["judged_by"] == [1]
    assert hosts[3]["renewal_age_s"] is None and hosts[3]["silent_at_least_s"] == 1.5
    assert hosts[1]["summary"] == {"vms": 1, "drives": 2, "extends_last_hour": 4,
                                   "last_extend_ms": 250, "paused": {"vm1": "enospc"},
                                   "version": "0.1.0", "paused_total": 1,
                                   "paused_cut": False}
    assert report["spm"] == {"host_id": 2, "lver": 7}
    assert report["vgs"][0]["level"] == "warning"  # 5 % free < 20 %
    text = "\n".join(lines(report))
    assert "SPM: host 2 (term lver 7)" in text and "DEAD" in text
    assert "dead by the lease of host(s) 1" in text and "host 1: vm1 (enospc)" in text
    assert "WARNING: demo" in text


def test_a_word_about_another_generation_does_not_count() -> None:
    """Host 3 restarted (generation 31): host 1's 'dead' was about generation 30."""
    watches = {1: Watch(slot(1, 10), True, 99.5), 3: Watch(slot(3, 31), False)}
    records = {1: rec(1, 10, {3: ("dead", 30)})}
    hosts = {h["host_id"]: h for h in combine(reading(watches, records, observed=0.2),
                                              CapacitySettings())["hosts"]}
    assert hosts[3]["state"] == "live" and hosts[3]["judged_by"] == [1]
    long_watch = combine(reading(watches, records, observed=2.0), CapacitySettings())
    assert {h["host_id"]: h["state"] for h in long_watch["hosts"]}[3] == "silent"


def test_watching_for_host_dead_decides_alone() -> None:
    watches = {3: Watch(slot(3, 30), False), 4: Watch(slot(4, 0, free=True), False)}
    report = combine(reading(watches, {}, observed=7.0), CapacitySettings())
    assert [(h["host_id"], h["state"]) for h in report["hosts"]] == [(3, "dead")]
    assert "no summary record" in "\n".join(lines(report))


@settings(deadline=None, max_examples=examples(100))
@given(st.dictionaries(st.integers(1, 16), st.tuples(st.booleans(), st.booleans(),
                                                     st.integers(0, 5))),
       st.dictionaries(st.integers(1, 16), st.binary(min_size=512, max_size=512)),
       st.floats(0, 10))
def test_any_reading_gives_a_report(slots: dict[int, tuple[bool, bool, int]],
                                    garbage: dict[int, bytes], observed: float) -> None:
    """Garbage records are shown as unreadable, never a traceback, never a state."""
    watches = {h: Watch(slot(h, g, free=free), changed, 99.0)
               for h, (free, changed, g) in slots.items()}
    records: dict[int, Any] = {}
    for h, raw in garbage.items():
        try:
            decoded = summary.decode(raw, h)
        except CorruptSector as err:
            records[h] = err.reason
            continue
        if decoded is not None:
            records[h] = decoded
    report = combine(reading(watches, records, observed, vg="bad checksum"),
                     CapacitySettings())
    assert all(h["state"] in ("live", "dead", "fail", "silent", "unknown", "free")
               for h in report["hosts"])
    assert "UNREADABLE" in "\n".join(lines(report))


def test_this_hosts_summary() -> None:
    clock = ManualClock()
    history = hostsummary.ExtendHistory(clock)
    vol = VolumeRef("vg", "lv")
    history.notify(ExtendFinished("vm1", "vda", vol, OutcomeKind.OK, 1, {"total": 0.4}))
    clock.advance(3000)
    history.notify(ExtendFinished("vm1", "vda", vol, OutcomeKind.OK, 2, {"total": 0.25}))
    history.notify(ExtendFinished("vm1", "vda", vol, None, 2, {}))
    vms: list[dict[str, Any]] = [{"vm": "b", "state": "paused-other", "paused": "user", "drives": [{}]},
           {"vm": "a", "state": "paused-enospc", "paused": "enospc", "drives": [{}, {}]},
           {"vm": "c", "state": "running", "paused": None, "drives": []}]
    facts = hostsummary.facts(vms, history)
    assert facts == HostFacts(vms=3, drives=3, extends_hour=2, last_extend_ms=250,
                              paused=(PausedVm("a", "enospc"), PausedVm("b", "user")),
                              version=__version__)
    clock.advance(700)  # the first one is now more than an hour old
    assert hostsummary.facts(vms, history).extends_hour == 1
    assert hostsummary.as_dict(facts)["paused"] == {"a": "enospc", "b": "user"}


async def test_the_watch_ends_once_every_host_renewed_or_is_said_dead() -> None:
    """Host 1 renews at the second read; host 3 never does, but host 1 (seen live) says it
    is dead: the watch ends there, not at its window."""
    reads = []

    async def read() -> dict[int, Slot]:
        reads.append(1)
        return {1: slot(1, 10 if len(reads) < 2 else 11), 3: slot(3, 30)}

    first = await read()
    records: dict[int, Any] = {1: rec(1, 11, {3: ("dead", 30)})}
    watches, _ = await observe(read, first, MonotonicClock(), 600.0, True, records)
    assert watches[1].changed and not watches[3].changed
    assert len(reads) == 2  # the first, and the one that saw host 1 renew: no more
