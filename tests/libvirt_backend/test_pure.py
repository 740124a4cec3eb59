"""Pure parts of the libvirt backend: names, domain XML, stats -> DriveInfo, event mapping."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.libvirt_backend import events as ev
from autoextend.libvirt_backend.domxml import (
    DiskFacts,
    DomainXmlError,
    error_policies,
    indexed_name,
    parse_disks,
    parse_indexed_name,
)
from autoextend.libvirt_backend.stats import StatsError, drives_from_stats
from autoextend.monitor.protocols import (
    DriveInfo,
    EnospcPause,
    PauseReason,
    RunState,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
    VmPaused,
    VmResumed,
)

MiB = 1 << 20

# ---------------------------------------------------------------- indexed names

targets = st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True)


@given(targets, st.integers(min_value=0, max_value=10**9))
def test_indexed_name_round_trip(target: str, index: int) -> None:
    assert parse_indexed_name(indexed_name(target, index)) == (target, index)


@pytest.mark.parametrize("name", ["vda", "", "vda[]", "vda[-1]", "vda[1", "[1]", "vda[1]x",
                                  "vda[١]", "vda [1]", "vda[1][2]"])
def test_plain_or_odd_names_are_not_indexed(name: str) -> None:
    assert parse_indexed_name(name) is None


@given(st.text())
def test_parse_indexed_name_never_crashes(name: str) -> None:
    parsed = parse_indexed_name(name)
    if parsed is not None:
        assert indexed_name(*parsed) == name


# ---------------------------------------------------------------- domain XML

DOMAIN_XML = """<domain type='qemu'>
  <name>vm1</name>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' error_policy='enospace'/>
      <source dev='/dev/loop7' index='3'/>
      <backingStore type='block' index='4'>
        <format type='qcow2'/>
        <source dev='/dev/loop8'/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/img.qcow2' index='2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/loop9' index='1'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source dev='/dev/loop10' index='5'/>
      <target dev='vdd' bus='virtio'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/loop11'/>
    </disk>
  </devices>
</domain>"""


def test_parse_disks_reads_what_stats_do_not_say() -> None:
    disks = parse_disks(DOMAIN_XML)
    assert [d.target for d in disks] == ["vda", "vdb", "vdc", "vdd", "sda"]
    vda = disks[0]
    assert vda == DiskFacts("vda", "block", "disk", "qcow2", False, "/dev/loop7", 3,
                            error_policy="enospace")
    assert vda.monitorable
    assert [d.monitorable for d in disks] == [True, False, False, False, False]
    assert disks[3].readonly
    assert disks[4] == DiskFacts("sda", "file", "cdrom", "", False, "", None)


def disk_with(policy: str, rpolicy: str = "", index: str = "1") -> str:
    attrs = "".join(f" {k}='{v}'" for k, v in (("error_policy", policy),
                                                ("rerror_policy", rpolicy)) if v)
    return (f"<domain><devices><disk type='block' device='disk'>"
            f"<driver name='qemu' type='qcow2'{attrs}/><source dev='/dev/loop1' index='{index}'/>"
            f"<target dev='vda'/></disk></devices></domain>")


@pytest.mark.parametrize(("policy", "reaches_guest"), [
    ("report", True), ("ignore", True), ("stop", False), ("enospace", False), ("", False),
])
def test_error_policy_audit(policy: str, reaches_guest: bool) -> None:
    """Issue 29 item 5 (libvirt side): report/ignore hand ENOSPC to the guest."""
    (disk,) = parse_disks(disk_with(policy, "report"))
    assert (disk.error_policy, disk.rerror_policy) == (policy, "report")
    assert disk.write_error_reaches_guest is reaches_guest
    assert error_policies([disk]) == {"vda[1]": (policy, "report")}


def test_error_policies_only_for_managed_kinds_and_bounded() -> None:
    assert error_policies(parse_disks(DOMAIN_XML)) == {"vda[3]": ("enospace", "")}
    (disk,) = parse_disks(disk_with("x" * 5000))
    assert disk.error_policy == "invalid" and not disk.write_error_reaches_guest


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<domain", "does not parse"),
        ("<network/>", "not <domain>"),
        ("<domain><devices><disk type='block'><source dev='/d' index='x'/>"
         "<target dev='vda'/></disk></devices></domain>", "not a number"),
    ],
)
def test_parse_disks_rejects_bad_xml(xml: str, message: str) -> None:
    with pytest.raises(DomainXmlError, match=message):
        parse_disks(xml)


# ---------------------------------------------------------------- stats -> DriveInfo


def block_stats(*entries: dict[str, Any]) -> dict[str, Any]:
    stats: dict[str, Any] = {"block.count": len(entries)}
    for i, entry in enumerate(entries):
        for key, value in entry.items():
            stats[f"block.{i}.{key}"] = value
    return stats


VDA_TOP = {"name": "vda", "backingIndex": 3, "path": "/dev/loop7", "allocation": 5 * MiB,
           "capacity": 1024 * MiB, "physical": 128 * MiB, "threshold": 100 * MiB}
VDA_BACKING = {"name": "vda", "backingIndex": 4, "path": "/dev/loop8", "allocation": 0,
               "capacity": 1024 * MiB, "physical": 256 * MiB}


def test_top_image_of_each_writable_qcow2_block_disk() -> None:
    stats = block_stats(
        VDA_TOP, VDA_BACKING,
        {"name": "vdb", "backingIndex": 2, "path": "/var/lib/img.qcow2", "allocation": 1,
         "capacity": 2, "physical": 3},
    )
    found = drives_from_stats("vm1", stats, parse_disks(DOMAIN_XML))
    assert found.drives == [
        DriveInfo("vm1", "vda[3]", "vda[3]", "/dev/loop7", 1024 * MiB, 5 * MiB, 128 * MiB,
                  100 * MiB, error_policy="enospc")  # libvirt's error_policy='enospace'
    ]
    assert found.skipped == []


def test_backing_entry_listed_first_is_not_taken_for_the_top() -> None:
    found = drives_from_stats("vm1", block_stats(VDA_BACKING, VDA_TOP), parse_disks(DOMAIN_XML))
    assert [(d.drive, d.path) for d in found.drives] == [("vda[3]", "/dev/loop7")]


def test_missing_threshold_means_none_armed() -> None:
    top = {k: v for k, v in VDA_TOP.items() if k != "threshold"}
    (drive,) = drives_from_stats("vm1", block_stats(top), parse_disks(DOMAIN_XML)).drives
    assert drive.threshold == 0


def test_index_from_stats_when_the_xml_has_none() -> None:
    disk = DiskFacts("vda", "block", "disk", "qcow2", False, "/dev/loop7", None)
    (drive,) = drives_from_stats("vm1", block_stats(VDA_TOP), [disk]).drives
    assert drive.drive == "vda[3]"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"capacity": 0}, "capacity is 0"),
        ({"allocation": None}, "stats lack allocation"),
        ({"physical": None, "capacity": None}, "stats lack physical, capacity"),
        ({"physical": "big"}, "stats lack physical"),
        ({"allocation": -1}, "stats lack allocation"),
        ({"allocation": True}, "stats lack allocation"),
        ({"backingIndex": 9}, "no block stats for its top image"),
        ({"name": "vdz"}, "no block stats for its top image"),
    ],
)
def test_odd_stats_skip_the_drive_with_a_reason(change: dict[str, Any], reason: str) -> None:
    top = {k: v for k, v in {**VDA_TOP, **change}.items() if v is not None}
    found = drives_from_stats("vm1", block_stats(top), parse_disks(DOMAIN_XML))
    assert found.drives == []
    assert len(found.skipped) == 1
    assert reason in found.skipped[0][1]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"capacity": 1 << 63}, "stats lack capacity"),
        ({"physical": (1 << 64) - 1}, "stats lack physical"),
        ({"allocation": 1 << 100}, "stats lack allocation"),
        ({"path": "/dev/loop7\x00"}, "NUL"),
        ({"path": "/" + "a" * 5000}, "too long"),
    ],
)
def test_out_of_range_stats_skip_the_drive(change: dict[str, Any], reason: str) -> None:
    found = drives_from_stats("vm1", block_stats({**VDA_TOP, **change}), parse_disks(DOMAIN_XML))
    assert found.drives == []
    assert reason in found.skipped[0][1]


def test_largest_valid_size_and_out_of_range_threshold() -> None:
    top = {**VDA_TOP, "capacity": (1 << 63) - 1, "threshold": 1 << 64}
    (drive,) = drives_from_stats("vm1", block_stats(top), parse_disks(DOMAIN_XML)).drives
    assert drive.capacity == (1 << 63) - 1 and drive.threshold == 0


def test_absurd_block_count_is_an_error() -> None:
    with pytest.raises(StatsError):
        drives_from_stats("vm1", {"block.count": 1 << 64}, parse_disks(DOMAIN_XML))


@pytest.mark.parametrize("xml", [
    DOMAIN_XML.replace("index='3'", "index='" + "9" * 5000 + "'"),
    "<domain>" + "<a>" * 100_000 + "</a>" * 100_000 + "</domain>",
    "<domain><devices><disk><target dev='vda\x00'/></disk></devices></domain>",
])
def test_hostile_xml_is_an_error_or_harmless(xml: str) -> None:
    try:
        disks = parse_disks(xml)
    except DomainXmlError:
        return
    assert all(d.index is None or d.index < 10**10 for d in disks)


def test_threshold_event_out_of_range_is_dropped() -> None:
    assert ev.threshold_outcome("vm1", "vda[1]", 1 << 64, 1) is None
    assert ev.threshold_outcome("vm1", "vda[1]", 5, -1) is None
    assert ev.threshold_outcome("vm1", "vda[" + "9" * 5000 + "]", 5, 1) is None


def test_no_block_count_is_an_error() -> None:
    with pytest.raises(StatsError):
        drives_from_stats("vm1", {"state.state": 1}, parse_disks(DOMAIN_XML))


stat_values = st.one_of(st.none(), st.integers(min_value=-5, max_value=1 << 40), st.text(max_size=3),
                        st.booleans(), st.sampled_from([1 << 63, (1 << 64) - 1, 1 << 200,
                                                        "/dev/x\x00"]))


@given(st.lists(st.dictionaries(
    st.sampled_from(["name", "backingIndex", "path", "allocation", "capacity", "physical",
                     "threshold"]),
    st.one_of(stat_values, st.sampled_from(["vda", "vdb", "/dev/loop7"])),
), max_size=4), st.one_of(st.none(), st.integers(-2, 6), st.text(max_size=2)))
def test_stats_never_crash_and_drives_are_sane(entries: list[dict[str, Any]], count: Any) -> None:
    stats = block_stats(*entries)
    if count is not None:
        stats["block.count"] = count
    try:
        found = drives_from_stats("vm1", stats, parse_disks(DOMAIN_XML))
    except StatsError:
        return
    for drive in found.drives:
        assert 0 < drive.capacity < 1 << 63
        for value in (drive.allocation, drive.physical, drive.threshold):
            assert 0 <= value < 1 << 63
        assert "\x00" not in drive.path
        assert parse_indexed_name(drive.drive) is not None
        assert drive.node == drive.drive


# ---------------------------------------------------------------- lifecycle mapping

E = libvirt
LIFECYCLE_TABLE = [
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_BOOTED, False, VmAppeared("v")),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_MIGRATED, False, VmAppeared("v")),
    (E.VIR_DOMAIN_EVENT_STARTED, E.VIR_DOMAIN_EVENT_STARTED_RESTORED, False, VmAppeared("v")),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN, False, VmGone("v", clean=True)),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_DESTROYED, True, VmGone("v")),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_MIGRATED, False, VmGone("v")),
    (E.VIR_DOMAIN_EVENT_STOPPED, E.VIR_DOMAIN_EVENT_STOPPED_CRASHED, False, VmGone("v")),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, False,
     VmPaused("v", PauseReason.USER)),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, True,
     VmPaused("v", PauseReason.USER)),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED, False,
     VmPaused("v", PauseReason.MIGRATION)),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY, False,
     VmPaused("v", PauseReason.MIGRATION)),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, True,
     VmPaused("v", PauseReason.ENOSPC)),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, False, ev.Classify("v")),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, E.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG, False,
     VmPaused("v", PauseReason.OTHER)),
    (E.VIR_DOMAIN_EVENT_SUSPENDED, 99, False, ev.Classify("v")),
    (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED, True, VmResumed("v")),
    (E.VIR_DOMAIN_EVENT_RESUMED, E.VIR_DOMAIN_EVENT_RESUMED_MIGRATED, False, VmResumed("v")),
    (E.VIR_DOMAIN_EVENT_CRASHED, 0, False, VmPaused("v", PauseReason.OTHER)),
    (E.VIR_DOMAIN_EVENT_PMSUSPENDED, 0, False, VmPaused("v", PauseReason.OTHER)),
    (E.VIR_DOMAIN_EVENT_DEFINED, E.VIR_DOMAIN_EVENT_DEFINED_ADDED, False, None),
    (E.VIR_DOMAIN_EVENT_UNDEFINED, E.VIR_DOMAIN_EVENT_UNDEFINED_REMOVED, False, None),
    (E.VIR_DOMAIN_EVENT_SHUTDOWN, 0, False, None),
    (99, 0, False, None),
]


@pytest.mark.parametrize(("event", "detail", "enospc_seen", "expected"), LIFECYCLE_TABLE)
def test_lifecycle_outcome(event: int, detail: int, enospc_seen: bool, expected: object) -> None:
    assert ev.lifecycle_outcome("v", event, detail, enospc_seen=enospc_seen) == expected


@given(st.integers(-3, 20), st.integers(-3, 20), st.booleans())
def test_lifecycle_never_invents_an_enospc_pause(event: int, detail: int, seen: bool) -> None:
    outcome = ev.lifecycle_outcome("v", event, detail, enospc_seen=seen)
    if isinstance(outcome, VmPaused) and outcome.reason is PauseReason.ENOSPC:
        assert seen and detail == E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR


def test_threshold_only_on_indexed_names() -> None:
    assert ev.threshold_outcome("v", "vda", 10, 2) is None
    assert ev.threshold_outcome("v", "vda[1]", 10, 2) == ThresholdCrossed("v", "vda[1]", 10, 2)


def test_io_error_only_for_enospc() -> None:
    by_path = {"/dev/loop7": "vda[3]"}
    assert ev.io_error_outcome("v", "/dev/loop7", "enospc", by_path) == EnospcPause("v", "vda[3]")
    assert ev.io_error_outcome("v", "/dev/loop9", "enospc", by_path) == EnospcPause("v", "")
    assert ev.io_error_outcome("v", "/dev/loop7", "", by_path) is None
    assert ev.io_error_outcome("v", "/dev/loop7", "eio", by_path) is None


# ---------------------------------------------------------------- state -> RunState

NO_SPACE, UNSPEC, NONE = (E.VIR_DOMAIN_DISK_ERROR_NO_SPACE, E.VIR_DOMAIN_DISK_ERROR_UNSPEC,
                          E.VIR_DOMAIN_DISK_ERROR_NONE)
STATE_TABLE = [
    (E.VIR_DOMAIN_RUNNING, 1, None, RunState(True)),
    (E.VIR_DOMAIN_BLOCKED, 0, None, RunState(True)),
    (E.VIR_DOMAIN_SHUTDOWN, 0, None, RunState(True)),
    (E.VIR_DOMAIN_SHUTOFF, 0, None, None),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_USER, None, RunState(False, PauseReason.USER)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_MIGRATION, None,
     RunState(False, PauseReason.MIGRATION)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED, None,
     RunState(False, PauseReason.MIGRATION)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_IOERROR, {"vda": NO_SPACE},
     RunState(False, PauseReason.ENOSPC)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_IOERROR, {"vda": NO_SPACE, "vdb": NONE},
     RunState(False, PauseReason.ENOSPC)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_IOERROR, {"vda": NO_SPACE, "vdb": UNSPEC},
     RunState(False, PauseReason.IO_ERROR)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_IOERROR, {"vda": UNSPEC},
     RunState(False, PauseReason.IO_ERROR)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_IOERROR, {}, RunState(False, PauseReason.IO_ERROR)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_IOERROR, None,
     RunState(False, PauseReason.IO_ERROR)),
    (E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_CRASHED, None, RunState(False, PauseReason.OTHER)),
    (E.VIR_DOMAIN_PAUSED, 99, None, RunState(False, PauseReason.OTHER)),
    (E.VIR_DOMAIN_CRASHED, 0, None, RunState(False, PauseReason.OTHER)),
    (E.VIR_DOMAIN_PMSUSPENDED, 0, None, RunState(False, PauseReason.OTHER)),
]


@pytest.mark.parametrize(("state", "reason", "disk_errors", "expected"), STATE_TABLE)
def test_run_state_of(state: int, reason: int, disk_errors: dict[str, int] | None,
                      expected: RunState | None) -> None:
    assert ev.run_state_of(state, reason, disk_errors) == expected


def test_disk_errors_needed_only_for_io_error_pauses() -> None:
    assert ev.needs_disk_errors(E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_IOERROR)
    assert not ev.needs_disk_errors(E.VIR_DOMAIN_PAUSED, E.VIR_DOMAIN_PAUSED_USER)
    assert not ev.needs_disk_errors(E.VIR_DOMAIN_RUNNING, E.VIR_DOMAIN_PAUSED_IOERROR)


@given(st.integers(-2, 15), st.integers(-2, 20),
       st.one_of(st.none(), st.dictionaries(st.sampled_from(["vda", "vdb"]), st.integers(0, 3))))
def test_enospc_only_when_every_disk_error_is_no_space(
    state: int, reason: int, disk_errors: dict[str, int] | None
) -> None:
    result = ev.run_state_of(state, reason, disk_errors)
    if result is not None and result.pause_reason is PauseReason.ENOSPC:
        assert disk_errors is not None
        assert NO_SPACE in disk_errors.values()
        assert set(disk_errors.values()) <= {NO_SPACE, NONE}
    if result is not None and result.running:
        assert result.pause_reason is None
