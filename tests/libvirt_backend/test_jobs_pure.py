"""libvirt block-job targets from the live XML and the block stats (pure)."""

from __future__ import annotations

from autoextend.libvirt_backend.jobs import (
    COMPLETED,
    FAILED,
    READY,
    block_job_events,
    job_targets,
    parse_mirrors,
)
from autoextend.libvirt_backend.stats import DrivesFound
from autoextend.monitor.protocols import DrivesChanged, JobEnded

MiB = 1 << 20

XML = """<domain type='qemu'><name>vm1</name><devices>
<disk type='block' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source dev='/dev/loop5' index='1'/>
  <backingStore type='block' index='2'><format type='qcow2'/><source dev='/dev/loop4'/>
    <backingStore/></backingStore>
  <mirror type='block' job='active-commit' ready='yes'>
    <format type='qcow2'/><source dev='/dev/loop4' index='2'/>
  </mirror>
  <target dev='vda' bus='virtio'/>
</disk>
<disk type='block' device='disk'>
  <driver name='qemu' type='qcow2'/><source dev='/dev/loop6' index='3'/>
  <mirror type='block' job='copy'><format type='qcow2'/><source dev='/dev/loop7' index='4'/>
  </mirror>
  <target dev='vdb' bus='virtio'/>
</disk>
<disk type='block' device='disk'>
  <mirror type='block' job='copy'><source dev='/dev/loop8'/></mirror>
  <target dev='vdc' bus='virtio'/>
</disk>
</devices></domain>"""

STATS = {
    "block.count": 3,
    "block.0.name": "vda", "block.0.backingIndex": 1, "block.0.path": "/dev/loop5",
    "block.0.capacity": 256 * MiB, "block.0.allocation": 40 * MiB, "block.0.physical": 64 * MiB,
    "block.1.name": "vda", "block.1.backingIndex": 2, "block.1.path": "/dev/loop4",
    "block.1.capacity": 256 * MiB, "block.1.allocation": 15 * MiB, "block.1.physical": 16 * MiB,
    "block.1.threshold": 8 * MiB,
    "block.2.name": "vdb", "block.2.backingIndex": 3, "block.2.path": "/dev/loop6",
    "block.2.capacity": 256 * MiB, "block.2.allocation": 1 * MiB, "block.2.physical": 64 * MiB,
}


def test_mirrors_with_an_index() -> None:
    mirrors = parse_mirrors(XML)
    assert [(m.target, m.job, m.index, m.path) for m in mirrors] == [
        ("vda", "active-commit", 2, "/dev/loop4"), ("vdb", "copy", 4, "/dev/loop7")]
    assert parse_mirrors("<not xml") == []


def test_commit_base_is_a_target_copy_without_stats_is_skipped() -> None:
    found = DrivesFound()
    [t] = job_targets("vm1", STATS, parse_mirrors(XML), found)
    assert (t.drive, t.node, t.path, t.job, t.job_id) == ("vda[2]", "vda[2]", "/dev/loop4",
                                                           "commit", "vda")
    assert (t.capacity, t.allocation, t.physical, t.threshold) == (
        256 * MiB, 15 * MiB, 16 * MiB, 8 * MiB)
    assert found.skipped == [("vdb[4]", "no block stats for the mirror target")]


def test_block_job_events() -> None:
    assert block_job_events("vm1", "vda", 4, READY) == [DrivesChanged("vm1")]
    assert block_job_events("vm1", "vda", 4, COMPLETED)[0] == JobEnded("vm1", "vda", "commit")
    failed = block_job_events("vm1", "vda", 2, FAILED)[0]
    assert isinstance(failed, JobEnded) and failed.kind == "mirror" and failed.error
