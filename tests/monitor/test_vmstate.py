"""The VM pause state machine: every (state, event) pair, and properties over sequences."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.backoff import backoff
from autoextend.monitor.protocols import DriveIoError, PauseReason
from autoextend.monitor.vmstate import (
    PAUSED,
    Action,
    ResumePolicy,
    Step,
    VmEvent,
    VmMachine,
    VmState,
    classify,
    describe,
    step,
)

S, E, A, P = VmState, VmEvent, Action, ResumePolicy
RUNNING, ENOSPC, UNMANAGED = S.RUNNING, S.PAUSED_ENOSPC, S.PAUSED_ENOSPC_UNMANAGED
IOERR, OTHER, GONE = S.PAUSED_IO_ERROR, S.PAUSED_OTHER, S.GONE
PAUSE = (A.NOTE_PAUSED,)


def expected(state: VmState, event: VmEvent, policy: ResumePolicy) -> Step:
    """The whole table, written out: one line per (state, event) pair."""
    table: dict[tuple[VmState, VmEvent], Step] = {
        # running
        (RUNNING, E.RUNNING): Step(RUNNING),
        (RUNNING, E.ENOSPC): Step(ENOSPC, PAUSE),
        (RUNNING, E.ENOSPC_UNMANAGED): Step(UNMANAGED, (A.NOTE_PAUSED, A.WARN_UNMANAGED)),
        (RUNNING, E.IO_ERROR): Step(IOERR, PAUSE),
        (RUNNING, E.OTHER_PAUSE): Step(OTHER, PAUSE),
        (RUNNING, E.ROOM): Step(RUNNING),
        (RUNNING, E.STORAGE_OK): Step(RUNNING),
        (RUNNING, E.KILL_DUE): Step(RUNNING),
        (RUNNING, E.GONE): Step(GONE),
        # paused for ENOSPC on managed drives: resumed once they have room
        (ENOSPC, E.RUNNING): Step(RUNNING, (A.NOTE_RUNNING,)),
        (ENOSPC, E.ENOSPC): Step(ENOSPC),
        (ENOSPC, E.ENOSPC_UNMANAGED): Step(UNMANAGED, (A.NOTE_PAUSED, A.WARN_UNMANAGED)),
        (ENOSPC, E.IO_ERROR): Step(IOERR, PAUSE),
        (ENOSPC, E.OTHER_PAUSE): Step(OTHER, PAUSE),
        (ENOSPC, E.ROOM): Step(ENOSPC, (A.RESUME,)),
        (ENOSPC, E.STORAGE_OK): Step(ENOSPC),
        (ENOSPC, E.KILL_DUE): Step(ENOSPC),
        (ENOSPC, E.GONE): Step(GONE),
        # paused for ENOSPC involving an unmanaged drive: sticky, never resumed, never killed
        (UNMANAGED, E.RUNNING): Step(RUNNING, (A.NOTE_RUNNING,)),
        (UNMANAGED, E.ENOSPC): Step(UNMANAGED),
        (UNMANAGED, E.ENOSPC_UNMANAGED): Step(UNMANAGED),
        (UNMANAGED, E.IO_ERROR): Step(UNMANAGED),
        (UNMANAGED, E.OTHER_PAUSE): Step(UNMANAGED),
        (UNMANAGED, E.ROOM): Step(UNMANAGED),
        (UNMANAGED, E.STORAGE_OK): Step(UNMANAGED),
        (UNMANAGED, E.KILL_DUE): Step(UNMANAGED),
        (UNMANAGED, E.GONE): Step(GONE),
        # paused on an I/O error: by policy
        (IOERR, E.RUNNING): Step(RUNNING, (A.NOTE_RUNNING,)),
        (IOERR, E.ENOSPC): Step(ENOSPC, PAUSE),
        (IOERR, E.ENOSPC_UNMANAGED): Step(UNMANAGED, (A.NOTE_PAUSED, A.WARN_UNMANAGED)),
        (IOERR, E.IO_ERROR): Step(IOERR),
        (IOERR, E.OTHER_PAUSE): Step(OTHER, PAUSE),
        (IOERR, E.ROOM): Step(IOERR),
        (IOERR, E.STORAGE_OK): Step(IOERR, () if policy is P.LEAVE else (A.RESUME,)),
        (IOERR, E.KILL_DUE): Step(IOERR, (A.KILL,) if policy is P.KILL else ()),
        (IOERR, E.GONE): Step(GONE),
        # paused by an operator, for migration, or unknown: never resumed
        (OTHER, E.RUNNING): Step(RUNNING, (A.NOTE_RUNNING,)),
        (OTHER, E.ENOSPC): Step(ENOSPC, PAUSE),
        (OTHER, E.ENOSPC_UNMANAGED): Step(UNMANAGED, (A.NOTE_PAUSED, A.WARN_UNMANAGED)),
        (OTHER, E.IO_ERROR): Step(IOERR, PAUSE),
        (OTHER, E.OTHER_PAUSE): Step(OTHER),
        (OTHER, E.ROOM): Step(OTHER),
        (OTHER, E.STORAGE_OK): Step(OTHER),
        (OTHER, E.KILL_DUE): Step(OTHER),
        (OTHER, E.GONE): Step(GONE),
    }
    if state is GONE:
        return Step(GONE)
    return table[(state, event)]


def test_table_covers_every_pair() -> None:
    pairs = set(itertools.product(VmState, VmEvent))
    assert len(pairs) == len(VmState) * len(VmEvent)
    for state, event in pairs:
        expected(state, event, P.AUTO)  # raises KeyError on a missing pair


@pytest.mark.parametrize("policy", list(ResumePolicy))
@pytest.mark.parametrize(("state", "event"), list(itertools.product(VmState, VmEvent)))
def test_every_state_event_pair(state: VmState, event: VmEvent, policy: ResumePolicy) -> None:
    assert step(state, event, policy) == expected(state, event, policy)


events = st.lists(st.sampled_from(list(VmEvent)), max_size=40)


@given(st.sampled_from(list(ResumePolicy)), events)
def test_resume_only_from_enospc_or_io_error(policy: ResumePolicy, seq: list[VmEvent]) -> None:
    state = RUNNING
    for event in seq:
        result = step(state, event, policy)
        if A.RESUME in result.actions:
            assert state in (ENOSPC, IOERR)
            assert not (state is IOERR and policy is P.LEAVE)
        if A.KILL in result.actions:
            assert state is IOERR and policy is P.KILL
        state = result.state


@given(st.sampled_from(list(ResumePolicy)), events)
def test_unmanaged_is_never_resumed_until_seen_running(
    policy: ResumePolicy, seq: list[VmEvent]
) -> None:
    state = UNMANAGED
    for event in seq:
        result = step(state, event, policy)
        assert A.RESUME not in result.actions and A.KILL not in result.actions
        if event is E.RUNNING or event is E.GONE:
            break
        assert result.state is UNMANAGED
        state = result.state


@given(st.sampled_from(list(ResumePolicy)), events)
def test_gone_is_absorbing_and_notes_only_on_change(
    policy: ResumePolicy, seq: list[VmEvent]
) -> None:
    state = RUNNING
    warned = 0
    for event in seq:
        result = step(state, event, policy)
        if A.NOTE_PAUSED in result.actions or A.WARN_UNMANAGED in result.actions:
            assert result.state is not state and result.state in PAUSED
        warned += A.WARN_UNMANAGED in result.actions
        if state is GONE:
            assert result == Step(GONE)
        state = result.state
    # one warning per entry into the unmanaged state: never more entries than RUNNING seen + 1
    assert warned <= 1 + seq.count(E.RUNNING)


@given(st.integers(min_value=0, max_value=200), st.floats(0.01, 10), st.floats(10, 100))
def test_backoff_bounded_and_monotonic(attempt: int, initial: float, maximum: float) -> None:
    assert 0 <= backoff(attempt, initial, maximum) <= maximum
    assert backoff(attempt, initial, maximum) <= backoff(attempt + 1, initial, maximum)


def test_backoff_steps() -> None:
    assert [backoff(n, 1.0, 30.0) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]


def err(drive: str, nospace: bool = True) -> DriveIoError:
    return DriveIoError(drive, f"/dev/{drive}", nospace)


def test_classify() -> None:
    managed = frozenset({"vda"})
    assert classify(True, None, (), managed) is E.RUNNING
    assert classify(False, PauseReason.ENOSPC, (err("vda"),), managed) is E.ENOSPC
    # managed and unmanaged failing together: unmanaged wins (the VM stays paused)
    assert classify(False, PauseReason.ENOSPC, (err("vda"), err("vdb")), managed) \
        is E.ENOSPC_UNMANAGED
    # an unmanaged ENOSPC beside another I/O error: still not ours to resume
    assert classify(False, PauseReason.IO_ERROR, (err("vda", False), err("vdb")), managed) \
        is E.ENOSPC_UNMANAGED
    assert classify(False, PauseReason.IO_ERROR, (err("vdb", False),), managed) is E.IO_ERROR
    for reason in (PauseReason.USER, PauseReason.MIGRATION, PauseReason.OTHER, None):
        assert classify(False, reason, (), managed) is E.OTHER_PAUSE


def test_describe() -> None:
    assert describe(RUNNING) is None
    assert describe(UNMANAGED, ("vdb",)) == "enospc, unmanaged vdb"
    assert describe(IOERR) == "io-error"


def test_machine_probe_twice_and_resume_backoff() -> None:
    m = VmMachine(policy=P.AUTO)
    assert m.apply(E.IO_ERROR, 10.0, reason=PauseReason.IO_ERROR) == PAUSE
    assert m.paused_at == 10.0 and m.describe() == "io-error"
    assert not m.probe_result(True, 10.0, 1.0)
    assert not m.probe_result(False, 10.5, 1.0)
    assert not m.probe_result(True, 10.6, 1.0)
    assert not m.probe_result(True, 11.0, 1.0)  # too soon after the first: not yet
    assert m.probe_result(True, 11.6, 1.0)
    assert m.resume_due_at(1.0, 30.0) == 0.0
    assert m.apply(E.STORAGE_OK, 11.0) == (A.RESUME,)
    assert m.resume_due_at(1.0, 30.0) == 12.0
    m.apply(E.RUNNING, 11.1)
    m.apply(E.IO_ERROR, 11.2, reason=PauseReason.IO_ERROR)
    m.apply(E.STORAGE_OK, 12.0)
    assert m.resume_due_at(1.0, 30.0) == 14.0  # 1, 2, 4 ... a VM that keeps failing
    m.apply(E.RUNNING, 12.1)
    m.ran_stably(50.0, 30.0)
    assert m.resume_attempts == 0


def test_machine_describes_other_pauses_by_their_reason() -> None:
    m = VmMachine()
    m.apply(E.OTHER_PAUSE, 1.0, reason=PauseReason.USER)
    assert m.describe() == "user"
    m.apply(E.OTHER_PAUSE, 2.0, reason=PauseReason.MIGRATION)  # no state change: kept
    assert m.describe() == "user"
    m.apply(E.RUNNING, 3.0)
    m.apply(E.OTHER_PAUSE, 4.0, reason=PauseReason.MIGRATION)
    assert m.describe() == "migration"
