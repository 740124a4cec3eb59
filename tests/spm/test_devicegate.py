"""GROW-PV's gate (``spm/devicegate.py``, pure): ``pvresize`` only once every live host's
published view of each grown PV is at least the SPM's; the refusal names the first host
(by id) that holds it back; dead and free hosts do not count."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from autoextend.spm import inuse
from autoextend.spm.devicegate import grow_refusal, growing

MiB = 1 << 20


@dataclass(frozen=True)
class Pv:
    name: str
    uuid: str
    device_size: int
    extent_count: int
    extent_size: int = 4 * MiB

    @property
    def room(self) -> int:
        return self.device_size // self.extent_size


def record(host: int, views: dict[str, int], generation: int = 1) -> inuse.InUseRecord:
    return inuse.make_record(host, generation, 5, 0, [], devices=views)


PVS = [Pv("/dev/sdb", "uuid-b", 128 * MiB, 16), Pv("/dev/sdc", "uuid-c", 64 * MiB, 16)]


def test_the_first_host_whose_view_is_smaller_is_named() -> None:
    states = {1: ("live", 1), 2: ("live", 1), 3: ("fail", 1), 4: ("dead", 1)}
    full = {"uuid-b": 128 * MiB, "uuid-c": 64 * MiB}
    look: inuse.Look = {1: record(1, full), 2: record(2, {**full, "uuid-b": 64 * MiB}),
                        3: record(3, {}), 4: "read failed"}
    why = grow_refusal(PVS, look, states)
    assert why == (f"host 2: rescan PV /dev/sdb there, then run pool grow again (it sees"
                   f" {64 * MiB} B, the SPM {128 * MiB} B)"), why
    look = {**look, 2: record(2, full)}
    why = grow_refusal(PVS, look, states)  # host 3 is failing, not dead: it counts
    assert why is not None and why.startswith("host 3 does not list PV /dev/sdb"), why
    states[3] = ("dead", 1)
    assert grow_refusal(PVS, look, states) is None
    assert grow_refusal(PVS, {**look, 1: None}, states) is not None
    assert "another run" in (grow_refusal(PVS, {**look, 1: record(1, full, 9)}, states) or "")
    # Nothing grew: nothing to wait for, whatever the records say.
    assert grow_refusal([Pv("/dev/sdb", "uuid-b", 64 * MiB, 16)], {}, states) is None


@given(st.dictionaries(st.integers(1, 8), st.tuples(
    st.sampled_from(["live", "fail", "dead", "free"]),
    st.none() | st.integers(0, 256 * MiB))))
def test_refused_exactly_while_a_counted_host_sees_less(
        hosts: dict[int, tuple[str, int | None]]) -> None:
    """``hosts``: {host: (state, its view of the one grown PV, None: no record)}."""
    pv = Pv("/dev/sdb", "uuid-b", 128 * MiB, 16)
    assert growing([pv]) == [pv]
    states = {h: (state, 1) for h, (state, _) in hosts.items()}
    look: inuse.Look = {h: (None if seen is None else record(h, {"uuid-b": seen} if seen else {}))
                        for h, (_, seen) in hosts.items()}
    short = sorted(h for h, (state, seen) in hosts.items()
                   if state not in inuse.HOST_GONE and (seen or 0) < pv.device_size)
    why = grow_refusal([pv], look, states)
    assert (why is None) == (not short)
    if why is not None:
        first = re.search(r"host (\d+)", why)  # the first host the line names
        assert first is not None and int(first.group(1)) == short[0], why
