"""``autoextend_vms_paused`` (read by the AutoextendVMPaused alert) follows pauses and resumes."""

from __future__ import annotations

from autoextend.metrics import Metrics
from autoextend.monitor.observer import DriveGone, DriveSeen, Paused, Resumed
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
    m.notify(DriveSeen(_drive("vm1"), VolumeRef("vg", "vm1"), 4))
    m.notify(DriveSeen(_drive("vm2"), VolumeRef("vg", "vm2"), 4))
    m.notify(Paused("vm1", PauseReason.ENOSPC))
    m.notify(Paused("vm2", PauseReason.ENOSPC))
    assert _paused(m, "enospc") == 2
    m.notify(Paused("vm2", PauseReason.USER))  # the same VM, now paused for another reason
    assert (_paused(m, "enospc"), _paused(m, "user")) == (1, 1)
    m.notify(Resumed("vm1", True))
    assert _paused(m, "enospc") == 0
    m.notify(Resumed("vm2", False))  # resumed by an operator
    assert _paused(m, "user") == 0


def test_a_paused_vm_that_goes_away_is_no_longer_counted() -> None:
    m = Metrics()
    m.notify(DriveSeen(_drive("vm1"), VolumeRef("vg", "vm1"), 4))
    m.notify(Paused("vm1", PauseReason.ENOSPC))
    m.notify(DriveGone("vm1", "vda", VolumeRef("vg", "vm1")))
    assert _paused(m, "enospc") == 0
