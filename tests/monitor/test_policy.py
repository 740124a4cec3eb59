"""Threshold and size policy: properties that must hold for every input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor import policy
from autoextend.monitor.policy import DrivePolicy, MiB

policies = st.builds(
    DrivePolicy,
    chunk=st.integers(1, 1 << 34),
    utilization_percent=st.integers(0, 99),
    cap_factor=st.floats(1.0, 2.0),
    extent=st.sampled_from([512, 4 * MiB, 128 * MiB, 1 << 30]),
)
sizes = st.integers(0, 1 << 44)

DEFAULT = DrivePolicy(chunk=2560 * MiB, utilization_percent=20, cap_factor=1.1, extent=128 * MiB)


def test_vdsm_defaults() -> None:
    assert policy.watermark(DEFAULT) == 2048 * MiB
    assert policy.threshold(10 * 1024 * MiB, DEFAULT) == (10 * 1024 - 2048) * MiB
    assert policy.cap(10 * 1024 * MiB, DEFAULT) == 11264 * MiB  # 10 GiB * 1.1, 128 MiB aligned
    assert policy.next_size(1024 * MiB, 10 * 1024 * MiB, DEFAULT) == 3584 * MiB


@given(physical=st.integers(2, 1 << 44), pol=policies)
def test_threshold_below_physical(physical: int, pol: DrivePolicy) -> None:
    thr = policy.threshold(physical, pol)
    assert 1 <= thr < physical


@given(physical=sizes, capacity=sizes, pol=policies)
def test_next_size_bounds(physical: int, capacity: int, pol: DrivePolicy) -> None:
    nxt = policy.next_size(physical, capacity, pol)
    assert nxt >= physical  # never shrink
    assert nxt <= max(physical, policy.cap(capacity, pol))  # never past the cap
    if nxt > physical:
        assert nxt % pol.extent == 0 or nxt == policy.cap(capacity, pol)


@given(physical=sizes, capacity=sizes, pol=policies)
def test_next_size_grows_unless_capped(physical: int, capacity: int, pol: DrivePolicy) -> None:
    nxt = policy.next_size(physical, capacity, pol)
    assert (nxt > physical) == (not policy.at_cap(physical, capacity, pol))


@given(capacity=sizes, pol=policies)
def test_cap_covers_capacity(capacity: int, pol: DrivePolicy) -> None:
    c = policy.cap(capacity, pol)
    assert c >= capacity * pol.cap_factor - 1
    assert c % pol.extent == 0


@given(allocation=sizes, physical=st.integers(2, 1 << 44), pol=policies)
def test_needs_extension_matches_threshold(
    allocation: int, physical: int, pol: DrivePolicy
) -> None:
    # Crossing the armed threshold means we are inside the watermark.
    if allocation > policy.threshold(physical, pol) and policy.watermark(pol) < physical:
        assert policy.needs_extension(allocation, physical, pol)


@pytest.mark.parametrize(
    "kwargs",
    [dict(chunk=0), dict(extent=0), dict(utilization_percent=100), dict(cap_factor=0.9)],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    base = dict(chunk=MiB, utilization_percent=20, cap_factor=1.1, extent=MiB)
    base.update(kwargs)
    with pytest.raises(ValueError):
        DrivePolicy(**base)  # type: ignore[arg-type]
