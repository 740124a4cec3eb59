"""Backups through libvirt, the pure parts (``libvirt_backend/backups.py``): the backup XML,
which block stats entries the domain XML does not describe, when the backend asks for the
backup XML, and the job target a scratch becomes. The real backup is
``test_backup_libvirt.py`` (slow). The XML and stats below are what libvirt 9.0 gave here
during ``virDomainBackupBegin``."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

import libvirt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.clock import MonotonicClock
from autoextend.libvirt_backend import backups, jobs
from autoextend.libvirt_backend.backups import BackupImage, BackupXmlError
from autoextend.libvirt_backend.domxml import DiskFacts
from autoextend.libvirt_backend.hypervisor import LibvirtHypervisor, _backup_xml
from autoextend.libvirt_backend.stats import DrivesFound
from autoextend.monitor import jobpolicy, policy
from autoextend.monitor.protocols import DriveInfo
from tests.libvirt_backend.harness import fast_settings

MiB = 1 << 20

PULL = """<domainbackup mode='pull'>
  <server transport='unix' socket='/tmp/bk/run-pull/nbd.sock'/>
  <disks>
    <disk name='vda' backup='yes' type='block' backupmode='full' exportname='vda' index='2'>
      <driver type='qcow2'/>
      <scratch dev='/dev/loop23'/>
    </disk>
  </disks>
</domainbackup>
"""

PUSH = """<domainbackup mode='push'>
  <disks>
    <disk name='vda' backup='yes' type='block' backupmode='full' index='2'>
      <driver type='qcow2'/>
      <target dev='/dev/loop24'/>
    </disk>
    <disk name='vdb' backup='no'/>
    <disk name='vdc' backup='yes' type='file' index='5'>
      <driver type='raw'/>
      <target file='/var/backup/vdc.raw'/>
    </disk>
  </disks>
</domainbackup>
"""

DOMAIN = """<domain type='qemu'><name>bkx</name><devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' error_policy='enospace' io='native'/>
      <source dev='/dev/loop30' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
</devices></domain>"""

STATS: dict[str, Any] = {
    "block.count": 2,
    "block.0.name": "vda", "block.0.path": "/dev/loop30", "block.0.backingIndex": 1,
    "block.0.allocation": 0, "block.0.capacity": 256 * MiB, "block.0.physical": 64 * MiB,
    "block.1.name": "vda", "block.1.path": "/dev/loop23", "block.1.backingIndex": 2,
    "block.1.allocation": 327680, "block.1.capacity": 256 * MiB,
    "block.1.physical": 16 * MiB,
}


def test_pull_mode_scratch() -> None:
    assert backups.parse_backup(PULL) == [
        BackupImage("vda", "pull", 2, "/dev/loop23", block=True, qcow2=True)]
    assert backups.parse_backup(PULL)[0].managed_kind


def test_push_mode_targets() -> None:
    vda, vdc = backups.parse_backup(PUSH)
    assert vda == BackupImage("vda", "push", 2, "/dev/loop24", block=True, qcow2=True)
    assert vdc == BackupImage("vdc", "push", 5, "/var/backup/vdc.raw", block=False,
                              qcow2=False)
    assert vda.managed_kind and not vdc.managed_kind


def test_images_libvirt_does_not_name_are_left_out() -> None:
    xml = ("<domainbackup mode='pull'><disks><disk name='vda' backup='yes' type='file'/>"
           "<disk name='vdb' backup='yes' type='block'><driver type='qcow2'/>"
           "<scratch dev='/dev/x'/></disk></disks></domainbackup>")
    (image,) = backups.parse_backup(xml)
    assert (image.disk, image.index, image.managed_kind) == ("vdb", None, False)


@pytest.mark.parametrize(("xml", "words"), [
    ("", "does not parse"),
    ("<domainbackup", "does not parse"),
    ("<domain/>", "not <domainbackup>"),
    ("<domainbackup mode='sideways'/>", "neither pull nor push"),
    ("<domainbackup><disks><disk name='../x'/></disks></domainbackup>", "no disk target"),
    ("<domainbackup><disks><disk name='vda' index='x1'/></disks></domainbackup>",
     "is not a number"),
    ("<domainbackup><disks><disk name='vda' index='" + "9" * 5000 + "'/></disks>"
     "</domainbackup>", "is not a number"),
    ("<domainbackup><disks><disk name='vda'><target dev='dev/x'/></disk></disks>"
     "</domainbackup>", "not a clean absolute path"),
    ("<domainbackup><disks><disk name='vda'><target dev='/dev/x&#10;'/></disk></disks>"
     "</domainbackup>", "not a clean absolute path"),
    ("<domainbackup>" + " " * backups.MAX_XML + "</domainbackup>", "at most"),
    ("<domainbackup><disks>" + "<disk name='vda'/>" * (backups.MAX_DISKS + 1)
     + "</disks></domainbackup>", "at most"),
])
def test_garbage_is_refused_in_one_line(xml: str, words: str) -> None:
    with pytest.raises(BackupXmlError) as err:
        backups.parse_backup(xml)
    assert words in str(err.value) and "\n" not in str(err.value), err.value
    assert len(str(err.value)) < 400


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(xml: str) -> None:
    try:
        images = backups.parse_backup(xml)
    except BackupXmlError:
        return
    assert all(i.mode in backups.MODES for i in images)


DISK = st.tuples(
    st.from_regex(r"vd[a-z]{1,2}", fullmatch=True),
    st.sampled_from(["pull", "push"]),
    st.one_of(st.none(), st.integers(0, 10**9)),
    st.from_regex(r"/dev/[a-z0-9]{1,12}(/[a-z0-9_.-]{1,12})?", fullmatch=True),
    st.booleans(),
    st.sampled_from(["qcow2", "raw"]),
)


@given(st.sampled_from(["pull", "push"]), st.lists(DISK, max_size=8))
def test_round_trip(mode: str, disks: list[tuple[str, str, int | None, str, bool, str]]
                    ) -> None:
    tag = "scratch" if mode == "pull" else "target"
    body = "".join(
        f"<disk name='{name}' backup='yes' type='{'block' if block else 'file'}'"
        + (f" index='{index}'" if index is not None else "")
        + f"><driver type='{fmt}'/><{tag} {'dev' if block else 'file'}={quoteattr(path)}/>"
        "</disk>"
        for name, _, index, path, block, fmt in disks)
    parsed = backups.parse_backup(f"<domainbackup mode='{mode}'><disks>{body}</disks>"
                                  "</domainbackup>")
    assert parsed == [BackupImage(name, mode, index, path, block, fmt == "qcow2")
                      for name, _, index, path, block, fmt in disks]


def test_the_scratch_is_the_one_undescribed_stats_entry() -> None:
    shown = backups.described(DOMAIN)
    assert shown == {"vda": {1}}
    assert backups.undescribed(STATS, shown) == {"vda[2]"}
    only_top = {k: v for k, v in STATS.items() if not k.startswith("block.1.")}
    assert backups.undescribed({**only_top, "block.count": 1}, shown) == set()
    assert backups.described("<domain") == {}


@given(st.lists(st.tuples(st.sampled_from(["vda", "vdb"]), st.integers(0, 20)),
                max_size=12),
       st.lists(st.integers(0, 20), max_size=6))
def test_undescribed_is_what_the_xml_lacks(entries: list[tuple[str, int]],
                                           shown_vda: list[int]) -> None:
    stats: dict[str, Any] = {"block.count": len(entries)}
    for i, (name, index) in enumerate(entries):
        stats[f"block.{i}.name"], stats[f"block.{i}.backingIndex"] = name, index
    shown = {"vda": set(shown_vda)}
    found = backups.undescribed(stats, shown)
    assert found == {f"{n}[{i}]" for n, i in entries if i not in shown.get(n, set())}


class FakeDom:
    """Counts backupGetXMLDesc calls (the cost per look being tested)."""

    def __init__(self, reply: str | Exception) -> None:
        self.reply = reply
        self.calls = 0

    def backupGetXMLDesc(self, flags: int) -> str:  # noqa: N802 - libvirt's name
        self.calls += 1
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def test_the_backup_xml_is_asked_only_for_an_undescribed_image() -> None:
    dom = FakeDom(PULL)
    no_scratch = {**{k: v for k, v in STATS.items() if not k.startswith("block.1.")},
                  "block.count": 1}
    assert _backup_xml(dom, no_scratch, DOMAIN) == "" and dom.calls == 0
    assert _backup_xml(dom, STATS, DOMAIN) == PULL and dom.calls == 1
    gone = FakeDom(libvirt.libvirtError("Requested operation is not valid: no backup"))
    assert _backup_xml(gone, STATS, DOMAIN) == "" and gone.calls == 1


def hypervisor() -> LibvirtHypervisor:
    return LibvirtHypervisor(fast_settings("test:///default"), lambda _p: None,
                             MonotonicClock())


def test_a_managed_scratch_becomes_a_backup_job_target() -> None:
    hv = hypervisor()
    watched = backups.job_mirrors(hv._backup_images("vm1", PULL))
    assert watched == [jobs.Mirror("vda", "backup", 2, "/dev/loop23")]
    found = DrivesFound()
    (target,) = jobs.job_targets("vm1", STATS, watched, found)
    assert (target.drive, target.node, target.path, target.job, target.job_id) == (
        "vda[2]", "vda[2]", "/dev/loop23", "backup", "vda")
    assert (target.physical, target.allocation) == (16 * MiB, 327680)
    assert backups.job_mirrors(hv._backup_images("vm1", PUSH)) == [
        jobs.Mirror("vda", "backup", 2, "/dev/loop24")]
    assert hv.session_failures == 0


def test_a_refused_backup_xml_is_counted_not_raised() -> None:
    hv = hypervisor()
    assert hv._backup_images("vm1", "<domainbackup mode='x'/>") == []
    assert hv._backup_images("vm1", "") == []
    assert hv.session_failures == 1


# ---- a push target's need (jobs.BackupNeeds) -----------------------------------------------

DISKS = [DiskFacts("vda", "file", "disk", "raw", False, "/srv/vm1.img", None),
         DiskFacts("vdb", "network", "disk", "qcow2", False, "", None)]


def test_only_push_targets_get_a_source() -> None:
    assert backups.push_sources(backups.parse_backup(PUSH), DISKS) == {
        "vda[2]": jobs.BackupSource("/srv/vm1.img", "raw")}
    assert backups.push_sources(backups.parse_backup(PULL), DISKS) == {}
    assert backups.push_sources(backups.parse_backup(PUSH), []) == {}


def backup_target(physical: int, **kw: Any) -> DriveInfo:
    values: dict[str, Any] = {"vm": "vm1", "drive": "vda[2]", "node": "vda[2]",
                              "path": "/dev/loop24", "capacity": 64 * MiB,
                              "allocation": 0, "physical": physical, "job": "backup",
                              "job_id": "vda"}
    values.update(kw)
    return DriveInfo(**values)


async def test_a_push_target_need_is_the_source_measure_once_per_job() -> None:
    measured: list[tuple[str, str]] = []

    async def measure(path: str, fmt: str) -> int | None:
        measured.append((path, fmt))
        return 49 * MiB

    needs = jobs.BackupNeeds(measure)
    sources = {"vda[2]": jobs.BackupSource("/srv/vm1.img", "raw")}
    for _ in range(2):
        [got] = await needs.add("vm1", [backup_target(16 * MiB)], sources)
        assert got.job_need == 49 * MiB
    assert measured == [("/srv/vm1.img", "raw")]
    await needs.add("vm1", [], {})  # the backup ended: a new one measures again
    await needs.add("vm1", [backup_target(16 * MiB)], sources)
    assert len(measured) == 2
    # A pull scratch (no source given) and other jobs' targets keep no need.
    [scratch] = await needs.add("vm1", [backup_target(16 * MiB)], {})
    [mirror] = await needs.add("vm1", [backup_target(16 * MiB, job="mirror")], sources)
    assert scratch.job_need == 0 and mirror.job_need == 0
    assert len(measured) == 2


@pytest.mark.parametrize("source", [jobs.BackupSource("/srv/vm1.img", "raw"),
                                    jobs.BackupSource("", "qcow2"),
                                    jobs.BackupSource("/srv/vm1.img", "vmdk")])
async def test_an_unmeasurable_source_bounds_the_need_by_the_capacity(
        source: jobs.BackupSource) -> None:
    async def unmeasurable(path: str, fmt: str) -> int | None:
        return None

    needs = jobs.BackupNeeds(unmeasurable)
    [got] = await needs.add("vm1", [backup_target(16 * MiB)], {"vda[2]": source})
    assert got.job_need == 64 * MiB


async def test_a_push_target_is_grown_to_its_need_on_the_first_look() -> None:
    """The monitor's sizing (jobpolicy) on a measured push target: short, so extended to
    the need plus a watermark before the copy fills the first chunk."""
    async def measure(path: str, fmt: str) -> int | None:
        return 49 * MiB

    [got] = await jobs.BackupNeeds(measure).add(
        "vm1", [backup_target(16 * MiB)], {"vda[2]": jobs.BackupSource("/srv/a", "raw")})
    pol = policy.DrivePolicy(chunk=8 * MiB, utilization_percent=50, cap_factor=1.1,
                             extent=4 * MiB)
    assert jobpolicy.short(got, pol)
    assert jobpolicy.need_size(got, pol) >= 49 * MiB
