"""Job targets in the metrics: a gauge by job kind, failures and resumes counted."""

from __future__ import annotations

from autoextend.metrics import Metrics
from autoextend.monitor.observer import DriveGone, DriveSeen, JobFailed, JobResumed
from autoextend.monitor.protocols import DriveInfo
from autoextend.volumes import VolumeRef

MiB = 1 << 20


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_job_targets_and_job_counters() -> None:
    m = Metrics()
    assert value(m, "autoextend_job_targets_monitored", job="commit") == 0
    base = DriveInfo("vm1", "vda#c1", "p", "/dev/loop0", 256 * MiB, 0, 16 * MiB, job="commit",
                     job_id="c1")
    top = DriveInfo("vm1", "vda", "p1", "/dev/loop1", 256 * MiB, 0, 64 * MiB)
    m.notify(DriveSeen(base, VolumeRef("vg", "base"), 300 * MiB))
    m.notify(DriveSeen(top, VolumeRef("vg", "top"), 300 * MiB))
    assert value(m, "autoextend_job_targets_monitored", job="commit") == 1
    assert value(m, "autoextend_drives_monitored") == 2
    m.notify(JobResumed("vm1", "vda#c1", "commit", "c1"))
    m.notify(JobFailed("vm1", "c1", "commit", "nospace", "No space left on device"))
    assert value(m, "autoextend_block_job_resumes_total", job="commit") == 1
    assert value(m, "autoextend_block_job_failures_total", job="commit", reason="nospace") == 1
    m.notify(DriveGone("vm1", "vda#c1", VolumeRef("vg", "base")))
    assert value(m, "autoextend_job_targets_monitored", job="commit") == 0
