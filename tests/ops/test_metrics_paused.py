"""``autoextend_vms_paused`` (read by the AutoextendVMPaused alert) follows pauses and resumes."""

from __future__ import annotations

from autoextend.metrics import Metrics
from autoextend.monitor.protocols import DriveInfo, PauseReason
from autoextend.volumes import VolumeRef


def _paused(m: Metrics, reason: str) -> float | None:
    return m.registry.get_sample_value("autoextend_vms_paused", {"reason": reason})


def _drive(vm: str) -> DriveInfo:
    return DriveInfo(vm=vm, drive="vda", node="fmt0", path=f"/dev/{vm}", allocation=1,
                     physical=2, capacity=3)


def test_paused_gauge_counts_vms_by_reason() -> None:
    m = Metrics()
    assert _paused(m, "enospc") == 0
    m.drive_seen(_drive("vm1"), VolumeRef("vg", "vm1"), 4)
    m.drive_seen(_drive("vm2"), VolumeRef("vg", "vm2"), 4)
    m.paused("vm1", PauseReason.ENOSPC)
    m.paused("vm2", PauseReason.ENOSPC)
    assert _paused(m, "enospc") == 2
    m.paused("vm2", PauseReason.USER)  # the same VM, now paused for another reason
    assert (_paused(m, "enospc"), _paused(m, "user")) == (1, 1)
    m.resumed("vm1", True)
    assert _paused(m, "enospc") == 0
    m.resumed("vm2", False)  # resumed by an operator
    assert _paused(m, "user") == 0


def test_a_paused_vm_that_goes_away_is_no_longer_counted() -> None:
    m = Metrics()
    m.drive_seen(_drive("vm1"), VolumeRef("vg", "vm1"), 4)
    m.paused("vm1", PauseReason.ENOSPC)
    m.drive_gone("vm1", "vda", VolumeRef("vg", "vm1"))
    assert _paused(m, "enospc") == 0
