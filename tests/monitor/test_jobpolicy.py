"""Job targets' sizing: the pre-extension size and the doubled chunk (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor import jobpolicy, policy
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.overrides import resolve
from autoextend.monitor.protocols import DriveInfo
from autoextend.volumes import VolumeRef

MiB = 1 << 20
VOL = VolumeRef("vg0", "lv1")


def info(physical: int, capacity: int, need: int = 0, job: str = "commit") -> DriveInfo:
    return DriveInfo("vm1", "vda#c1", "p", "/dev/x", capacity, 0, physical, job=job,
                     job_need=need)


POL = policy.DrivePolicy(chunk=8 * MiB, utilization_percent=50, cap_factor=1.1,
                         extent=4 * MiB)


@given(st.integers(1, 1 << 40), st.integers(1, 1 << 40), st.integers(0, 1 << 41))
def test_need_size_is_capped_and_aligned(physical: int, capacity: int, need: int) -> None:
    size = jobpolicy.need_size(info(physical, capacity, need), POL)
    assert size <= policy.cap(capacity, POL)
    assert size % POL.extent == 0
    if need == 0:
        assert size == 0
    elif size < policy.cap(capacity, POL):
        assert size >= need + policy.watermark(POL)


def test_measured_commit_is_short_until_grown() -> None:
    assert jobpolicy.short(info(16 * MiB, 256 * MiB, 40 * MiB), POL)
    grown = jobpolicy.need_size(info(16 * MiB, 256 * MiB, 40 * MiB), POL)
    assert grown == 44 * MiB  # 40 MiB + the 4 MiB watermark, extent-aligned
    assert not jobpolicy.short(info(grown, 256 * MiB, 40 * MiB), POL)
    assert not jobpolicy.short(info(16 * MiB, 256 * MiB, 0), POL)


def test_job_target_chunk_is_multiplied() -> None:
    settings = PolicySettings(chunk_mib=8, job_chunk_factor=2.0)
    assert resolve(settings, info(16 * MiB, 256 * MiB), VOL).chunk == 16 * MiB
    assert resolve(settings, info(16 * MiB, 256 * MiB, job=""), VOL).chunk == 8 * MiB
    same = PolicySettings(chunk_mib=8, job_chunk_factor=1.0)
    assert resolve(same, info(16 * MiB, 256 * MiB), VOL).chunk == 8 * MiB
