"""The pure drive decisions (``monitor/plan.py``): examples, then properties."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor import policy
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.plan import (
    Arm,
    Disable,
    Extend,
    Gates,
    Hold,
    Idle,
    LookGates,
    NotNeeded,
    Wait,
    look,
    plan,
)
from autoextend.monitor.policy import DrivePolicy, MiB
from autoextend.monitor.protocols import DriveInfo
from autoextend.volumes import VolumeRef

VOL = VolumeRef("vg0", "lv1")
POL = DrivePolicy(chunk=128 * MiB, utilization_percent=50, cap_factor=1.1, extent=4 * MiB)
# watermark 64 MiB


def info(allocation: int, physical: int = 256 * MiB, capacity: int = 1024 * MiB,
         threshold: int = 0) -> DriveInfo:
    return DriveInfo("vm1", "vda", "n", "/dev/x", capacity, allocation, physical, threshold)


def drive(i: DriveInfo, state: ThresholdState = ThresholdState.UNSET, *, threshold: int = 0,
          enospc: bool = False, retry_at: float = 0.0) -> DriveState:
    d = DriveState(i, VOL, policy.cap(i.capacity, POL))
    d.state, d.threshold, d.enospc, d.retry_at = state, threshold, enospc, retry_at
    return d


# ---- examples ------------------------------------------------------------------------------


def test_plan_extends_one_chunk() -> None:
    i = info(200 * MiB)
    assert plan(i, drive(i), POL, Gates()) == Extend(384 * MiB)


def test_plan_finds_a_stale_event_not_needed() -> None:
    i = info(100 * MiB)
    assert plan(i, drive(i), POL, Gates()) == NotNeeded(192 * MiB)


def test_plan_extends_an_enospc_drive_even_with_room() -> None:
    i = info(100 * MiB)
    assert plan(i, drive(i, enospc=True), POL, Gates()) == Extend(384 * MiB)


def test_plan_disables_at_the_cap() -> None:
    cap = policy.cap(1024 * MiB, POL)
    i = info(cap, physical=cap)
    assert plan(i, drive(i), POL, Gates()) == Disable()


def test_plan_grows_a_job_target_to_its_need() -> None:
    i = info(100 * MiB)
    assert plan(i, drive(i), POL, Gates(job_need=800 * MiB)) == Extend(800 * MiB)


def test_plan_holds_for_space_then_dry_run() -> None:
    i = info(200 * MiB)
    assert plan(i, drive(i), POL, Gates(space=lambda: "critical", dry_run=True)) == Hold(
        "critical", 384 * MiB)
    assert plan(i, drive(i), POL, Gates(dry_run=True)) == Hold("dry-run", 384 * MiB,
                                                                dry_run=True)


def test_look_arms_an_unset_drive_and_a_lost_threshold() -> None:
    i = info(100 * MiB)
    assert look(i, drive(i), POL, LookGates(0.0)) == Arm(192 * MiB)
    lost = info(100 * MiB, threshold=0)
    assert look(lost, drive(lost, ThresholdState.SET, threshold=192 * MiB), POL,
                LookGates(0.0)) == Arm(192 * MiB)
    kept = info(100 * MiB, threshold=192 * MiB)
    assert look(kept, drive(kept, ThresholdState.SET, threshold=192 * MiB), POL,
                LookGates(0.0)) == Idle()


def test_look_waits_for_a_retry_and_then_extends() -> None:
    i = info(200 * MiB)
    d = drive(i, ThresholdState.EXCEEDED, retry_at=5.0)
    assert look(i, d, POL, LookGates(4.0)) == Wait(5.0)
    assert look(i, d, POL, LookGates(5.0)) == Extend()


def test_look_re_enables_a_disabled_drive_that_may_grow() -> None:
    i = info(100 * MiB)
    d = drive(i, ThresholdState.DISABLED)
    assert look(i, d, POL, LookGates(0.0)) == Arm(192 * MiB, reenable=True)
    assert look(i, d, POL, LookGates(0.0, frozen=True)) == Idle(reenable=True)


def test_look_does_nothing_while_incoming_or_without_capacity() -> None:
    i = info(200 * MiB)
    assert look(i, drive(i), POL, LookGates(0.0, may_arm=False)) == Idle()
    none = info(0, capacity=0)
    assert look(none, drive(none), POL, LookGates(0.0)).warn  # type: ignore[union-attr]


# ---- properties ----------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=1 << 44)
policies = st.builds(
    DrivePolicy,
    chunk=st.integers(min_value=1, max_value=1 << 34),
    utilization_percent=st.integers(min_value=0, max_value=99),
    cap_factor=st.floats(min_value=1.0, max_value=2.0),
    extent=st.sampled_from([512, 4096, 4 * MiB, 128 * MiB]),
)
states = st.sampled_from(list(ThresholdState))


@st.composite
def cases(draw: st.DrawFn) -> tuple[DriveInfo, DriveState, DrivePolicy, int]:
    pol = draw(policies)
    capacity = draw(sizes)
    physical = draw(st.integers(min_value=2, max_value=policy.cap(capacity, pol) + 1))
    allocation = draw(st.integers(min_value=0, max_value=physical + (1 << 30)))
    i = info(allocation, physical, capacity, draw(st.integers(0, physical)))
    d = DriveState(i, VOL, policy.cap(capacity, pol))
    d.state = draw(states)
    d.threshold = draw(st.integers(0, physical))
    d.enospc = draw(st.booleans())
    d.retry_at = draw(st.floats(0.0, 10.0))
    need = draw(st.one_of(st.just(0), st.integers(0, policy.cap(capacity, pol))))
    return i, d, pol, need


@given(cases(), st.booleans(), st.one_of(st.none(), st.text(min_size=1)))
def test_plan_never_shrinks_never_passes_the_cap_and_asks_the_gate_only_when_due(
    case: tuple[DriveInfo, DriveState, DrivePolicy, int], dry_run: bool, held: str | None,
) -> None:
    i, d, pol, need = case
    asked: list[bool] = []

    def space() -> str | None:
        asked.append(True)
        return held

    got = plan(i, d, pol, Gates(job_need=need, dry_run=dry_run, space=space))
    due = policy.needs_extension(i.allocation, i.physical, pol) or d.enospc or need > i.physical
    if isinstance(got, Extend):
        assert i.physical < got.target <= max(policy.cap(i.capacity, pol), need)
        assert due and held is None and not dry_run
    elif isinstance(got, NotNeeded):
        assert not due and 1 <= got.threshold < i.physical
    elif isinstance(got, Hold):
        assert due and (got.reason == held or (held is None and got.dry_run))
        assert i.physical < got.target
    else:
        assert isinstance(got, Disable)
        assert policy.at_cap(i.physical, i.capacity, pol) and need <= i.physical
    assert asked == ([True] if isinstance(got, Extend | Hold) else [])


@given(cases(), st.floats(0.0, 10.0), st.booleans(), st.booleans())
def test_look_arms_below_the_size_and_extends_only_what_may_be_extended(
    case: tuple[DriveInfo, DriveState, DrivePolicy, int], now: float, may_arm: bool,
    frozen: bool,
) -> None:
    i, d, pol, need = case
    got = look(i, d, pol, LookGates(now, may_arm=may_arm, frozen=frozen, job_need=need))
    if not may_arm:
        assert got == Idle()
    if isinstance(got, Arm):
        assert 1 <= got.threshold < i.physical and not frozen
        assert got.reenable == (d.state is ThresholdState.DISABLED)
    if isinstance(got, Wait):
        assert d.state is ThresholdState.EXCEEDED and now < got.at == d.retry_at
    if isinstance(got, Extend):
        assert d.state is ThresholdState.EXCEEDED or not policy.at_cap(
            i.physical, i.capacity, pol)
    if isinstance(got, Disable):
        assert d.state is not ThresholdState.DISABLED
