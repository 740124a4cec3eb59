"""Hypothesis stateful model of one Disk Paxos instance (after DiskSynod.tla), driving the
production pure functions (ballot.py, format.py) step by step with every interleaving of
3 hosts, crashes, timed-out writes that land late, and garbage reads.

Invariant: every host that completes phase 2 decides the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from autoextend.lease.ballot import (
    Value,
    abort_reason,
    choose_value,
    next_ballot,
    phase1_block,
    phase2_block,
)
from autoextend.lease.errors import RecordError
from autoextend.lease.format import Dblock, pack_dblock, unpack_dblock
from tests.hypo import examples

HOSTS = (1, 2, 3)
MAX_HOSTS = 4
LVER = 1
SS = 512
RARE = st.integers(0, 7).map(lambda x: x == 0)            # faults in 1 of 8 steps
GARBAGE = st.integers(0, 11).map(lambda x: x if x in HOSTS else 0)


@dataclass
class Host:
    pc: str = "idle"          # idle | p1 | p2 (written, read pending)
    mbal: int = 0
    value: Value | None = None
    own: Dblock | None = None
    late: list[bytes] = field(default_factory=list)  # timed-out writes not landed yet


class DiskPaxosModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.disk = {h: pack_dblock(Dblock(h, 0, 0, 0, 0, 0), SS) for h in HOSTS}
        self.hosts = {h: Host() for h in HOSTS}
        self.decided: list[Value] = []

    def _read(self, garbage: int) -> dict[int, Dblock | None]:
        out: dict[int, Dblock | None] = {}
        for h, raw in self.disk.items():
            try:
                out[h] = unpack_dblock(b"\xff" + raw[1:] if h == garbage else raw)
            except RecordError:
                out[h] = None
        return out

    def _write(self, h: int, block: Dblock, times_out: bool) -> bool:
        host = self.hosts[h]
        for late in host.late:            # the storage orders writes to one sector
            self.disk[h] = late
        host.late = []
        data = pack_dblock(block, SS)
        if times_out:
            host.late.append(data)        # lands later (or on the next write)
            host.pc = "idle"
            return False
        self.disk[h] = data
        host.own = block
        return True

    def _pick(self, data: st.DataObject, pc: str) -> int:
        return data.draw(st.sampled_from([h for h in HOSTS if self.hosts[h].pc == pc]))

    @precondition(lambda self: any(h.pc == "idle" for h in self.hosts.values()))
    @rule(data=st.data(), times_out=RARE)
    def start_ballot(self, data: st.DataObject, times_out: bool) -> None:
        h = self._pick(data, "idle")
        host = self.hosts[h]
        view = self._read(garbage=0)
        own_mbal = host.own.mbal if host.own is not None else 0
        host.mbal = next_ballot(view, LVER, h, MAX_HOSTS, own_mbal)
        # Phase 0: the host knows its own last block (read back from disk after a crash).
        own = view.get(h) or host.own
        if self._write(h, phase1_block(own, h, LVER, host.mbal), times_out):
            host.pc = "p1"

    @precondition(lambda self: any(h.pc == "p1" for h in self.hosts.values()))
    @rule(data=st.data(), garbage=GARBAGE, times_out=RARE)
    def read_after_phase1(self, data: st.DataObject, garbage: int, times_out: bool) -> None:
        h = self._pick(data, "p1")
        host = self.hosts[h]
        view = self._read(garbage)
        if abort_reason(view, LVER, host.mbal, h):
            host.pc = "idle"
            return
        host.value = choose_value(view, LVER, Value(h, 1))
        if self._write(h, phase2_block(h, LVER, host.mbal, host.value), times_out):
            host.pc = "p2"

    @precondition(lambda self: any(h.pc == "p2" for h in self.hosts.values()))
    @rule(data=st.data(), garbage=GARBAGE)
    def read_after_phase2(self, data: st.DataObject, garbage: int) -> None:
        h = self._pick(data, "p2")
        host = self.hosts[h]
        view = self._read(garbage)
        host.pc = "idle"
        if abort_reason(view, LVER, host.mbal, h) is None:
            assert host.value is not None
            self.decided.append(host.value)
            event(f"decided {len(self.decided)}")

    @rule(h=st.sampled_from(HOSTS), rare=RARE)
    def crash(self, h: int, rare: bool) -> None:
        if not rare:
            return
        host = self.hosts[h]
        host.pc, host.own, host.late = "idle", None, []   # a crashed host's late I/O dies

    @precondition(lambda self: any(h.late for h in self.hosts.values()))
    @rule(h=st.sampled_from(HOSTS))
    def late_write_lands(self, h: int) -> None:
        host = self.hosts[h]
        if host.late:
            self.disk[h] = host.late.pop(0)

    @invariant()
    def one_decision(self) -> None:
        assert len(set(self.decided)) <= 1, self.decided


DiskPaxosModel.TestCase.settings = settings(max_examples=examples(400), stateful_step_count=40,
                                            deadline=None)
TestDiskPaxos = DiskPaxosModel.TestCase
