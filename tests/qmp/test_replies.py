"""Pure reply parsing, on replies recorded from a real QEMU 7.2 (see record_replies.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.monitor.protocols import DriveInfo, EnospcPause, PauseReason, ThresholdCrossed
from autoextend.qmp.errors import MalformedReply
from autoextend.qmp.replies import (
    MAX_SIZE,
    classify_pause,
    drive_name,
    drive_set,
    io_error_event,
    parse_io_status,
    parse_run_state,
    parse_topology,
    threshold_event,
    vm_name,
)
from tests.hypo import examples

RECORD: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "q35_mixed.json").read_text()
)
DEV = RECORD["devices"]
MiB = 1 << 20


def topology_of(record: dict[str, Any]) -> Any:
    return parse_topology(
        "vm1",
        record["query-block"],
        record["query-named-block-nodes"],
        record["query-blockstats"],
    )


def test_recorded_topology_keeps_only_writable_qcow2_on_host_device() -> None:
    topo = topology_of(RECORD)
    assert list(topo.drives) == [
        DriveInfo(vm="vm1", drive="vda", node="prot0", path=DEV["rw"], capacity=1 << 30,
                  allocation=2424832, physical=64 * MiB, threshold=32 * MiB,
                  cluster_size=65536),
        DriveInfo(vm="vm1", drive="sdb", node="prot9", path=DEV["hot"], capacity=1 << 30,
                  allocation=0, physical=64 * MiB, threshold=0, cluster_size=65536),
    ]
    # raw vdb, read-only vdc and the empty cd0 are not monitorable
    assert topo.drive_of("prot0") == "vda"
    assert topo.drive_of("fmt0") == "vda"
    assert topo.drive_of("fmt9") == "sdb"
    assert topo.drive_of("prot1") is None
    assert topo.drive_of("fmt2") is None


def test_recorded_io_status_and_drive_set() -> None:
    assert parse_io_status("vm1", RECORD["query-block"]) == {
        "vda": "ok", "vdb": "ok", "vdc": "ok", "cd0": "ok", "sdb": "ok"
    }
    assert drive_set("vm1", RECORD["query-block"]) == frozenset(
        {("vda", "fmt0"), ("vdb", "fmt1"), ("vdc", "fmt2"), ("sdb", "fmt9")}
    )


def test_unplugged_drive_disappears() -> None:
    record = copy.deepcopy(RECORD)
    record["query-block"] = [b for b in record["query-block"] if b["qdev"] != "sdb"]
    assert [d.drive for d in topology_of(record).drives] == ["vda"]


def test_qcow2_on_a_regular_file_is_skipped() -> None:
    record = copy.deepcopy(RECORD)
    for node in record["query-named-block-nodes"]:
        if node["node-name"] == "prot0":
            node["drv"] = "file"
    assert [d.drive for d in topology_of(record).drives] == ["sdb"]


@pytest.mark.parametrize(
    ("qdev", "device", "expected"),
    [
        ("/machine/peripheral/vda/virtio-backend", "", "vda"),
        ("/machine/peripheral/virtio-disk0/virtio-backend", "drive-virtio-disk0", "virtio-disk0"),
        ("sdb", "", "sdb"),
        ("/machine/peripheral-anon/device[0]/virtio-backend", "drive0",
         "drive0"),
        ("/machine/peripheral-anon/device[0]/virtio-backend", "",
         "/machine/peripheral-anon/device[0]/virtio-backend"),
        ("", "drive0", "drive0"),
        ("", "", None),
    ],
)
def test_drive_name(qdev: str, device: str, expected: str | None) -> None:
    assert drive_name(qdev, device) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [({"name": "web1"}, "web1"), ({}, "sock"), ({"name": ""}, "sock"), ({"name": 3}, "sock"),
     (None, "sock"), ([], "sock")],
)
def test_vm_name(reply: object, expected: str) -> None:
    assert vm_name(reply, "sock") == expected


@pytest.mark.parametrize(
    ("status", "io", "saw_nospace", "expected"),
    [
        ("paused", [], False, PauseReason.USER),
        ("paused", ["nospace"], True, PauseReason.USER),
        ("io-error", ["ok", "nospace"], False, PauseReason.ENOSPC),
        ("io-error", [], True, PauseReason.ENOSPC),
        ("io-error", ["ok"], True, PauseReason.ENOSPC),
        ("io-error", ["nospace", "failed"], True, PauseReason.IO_ERROR),
        ("io-error", ["ok"], False, PauseReason.IO_ERROR),
        ("inmigrate", [], False, PauseReason.MIGRATION),
        ("postmigrate", [], False, PauseReason.MIGRATION),
        ("finish-migrate", [], False, PauseReason.MIGRATION),
        ("prelaunch", [], False, PauseReason.OTHER),
        ("internal-error", ["nospace"], True, PauseReason.OTHER),
        ("shutdown", [], False, PauseReason.OTHER),
        ("guest-panicked", [], False, PauseReason.OTHER),
        ("something-new", [], False, PauseReason.OTHER),
    ],
)
def test_classify_pause(status: str, io: list[str], saw_nospace: bool,
                        expected: PauseReason) -> None:
    assert classify_pause(status, io, saw_nospace) is expected


@given(
    status=st.text(max_size=20) | st.sampled_from(["io-error", "paused", "inmigrate"]),
    io=st.lists(st.sampled_from(["ok", "failed", "nospace"]), max_size=4),
    saw=st.booleans(),
)
def test_enospc_only_for_io_error_without_other_failures(
    status: str, io: list[str], saw: bool
) -> None:
    reason = classify_pause(status, io, saw)
    if reason is PauseReason.ENOSPC:
        assert status == "io-error"
        assert "failed" not in io
        assert "nospace" in io or saw


def test_run_state() -> None:
    state = parse_run_state("vm1", RECORD["query-status"], ["ok"])
    assert not state.running and state.pause_reason is PauseReason.OTHER  # prelaunch
    state = parse_run_state("vm1", {"running": True, "status": "running"}, [])
    assert state.running and state.pause_reason is None
    with pytest.raises(MalformedReply, match="query-status.*running"):
        parse_run_state("vm1", {"status": "paused"}, [])


def test_events() -> None:
    topo = topology_of(RECORD)
    assert threshold_event(
        "vm1", {"node-name": "prot0", "write-threshold": 1024, "amount-exceeded": 5}, topo
    ) == ThresholdCrossed("vm1", "vda", 1024, 5)
    assert threshold_event(
        "vm1", {"node-name": "fmt1", "write-threshold": 1024, "amount-exceeded": 5}, topo
    ) is None
    assert io_error_event("vm1", {"device": "", "node-name": "fmt0", "nospace": True,
                                  "operation": "write", "action": "stop"}, topo) == (
        True, EnospcPause("vm1", "vda"))
    assert io_error_event("vm1", {"device": "", "node-name": "zzz", "nospace": True}, topo) == (
        True, EnospcPause("vm1", ""))
    assert io_error_event("vm1", {"device": "", "node-name": "fmt0", "nospace": False},
                          topo) == (False, None)
    assert io_error_event("vm1", {"device": "", "node-name": "fmt0"}, topo) == (False, None)
    with pytest.raises(MalformedReply, match="BLOCK_WRITE_THRESHOLD.*amount-exceeded"):
        threshold_event("vm1", {"node-name": "prot0", "write-threshold": 1}, topo)
    with pytest.raises(MalformedReply, match="BLOCK_IO_ERROR"):
        io_error_event("vm1", None, topo)


@pytest.mark.parametrize(
    ("which", "mutate", "message"),
    [
        ("query-block", lambda r: {"not": "a list"}, "query-block.*expected a list"),
        ("query-block", lambda r: [r[0] | {"inserted": {**r[0]["inserted"], "ro": "no"}}],
         r"query-block.*\[0\]\.inserted\.ro"),
        ("query-named-block-nodes", lambda r: [{**n, "write_threshold": -1} for n in r],
         "write_threshold"),
        ("query-blockstats", lambda r: [{**n, "stats": {}} for n in r], "wr_highest_offset"),
        ("query-named-block-nodes", lambda r: [{k: v for k, v in n.items() if k != "image"}
                                               for n in r], "image"),
    ],
)
def test_malformed_replies_give_a_clear_error(which: str, mutate: Any, message: str) -> None:
    record = copy.deepcopy(RECORD)
    record[which] = mutate(record[which])
    with pytest.raises(MalformedReply, match=message) as info:
        topology_of(record)
    assert info.value.vm == "vm1"
    assert info.value.command == which
    assert "\n" not in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 1 << 40) | st.text(max_size=8)
    | st.sampled_from([(1 << 63) - 1, 1 << 63, 1 << 64, 1 << 200, -(1 << 63), "\x00",
                       "/dev/loop3\x00", "a" * 5000]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


@settings(max_examples=examples(300), deadline=None)
@given(data=st.data())
def test_any_corruption_is_a_malformed_reply_or_a_valid_topology(data: st.DataObject) -> None:
    record = copy.deepcopy(RECORD)
    which = data.draw(st.sampled_from(["query-block", "query-named-block-nodes",
                                       "query-blockstats"]))
    paths = _paths(record[which])
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(json_values)
    delete = data.draw(st.booleans())
    if not path:
        record[which] = replacement
    else:
        parent = record[which]
        for key in path[:-1]:
            parent = parent[key]
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = replacement
    try:
        topo = topology_of(record)
    except MalformedReply as err:
        assert err.command in {"query-block", "query-named-block-nodes", "query-blockstats"}
        return
    for drive in topo.drives:
        for value in (drive.allocation, drive.physical, drive.capacity, drive.threshold):
            assert 0 <= value <= MAX_SIZE
        assert isinstance(drive.path, str) and drive.node
        for text in (drive.path, drive.node, drive.drive):
            assert "\x00" not in text and len(text) <= 4096


def _prot0(record: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in record["query-named-block-nodes"] if n["node-name"] == "prot0")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["query-block"][0]["inserted"]["image"].update({"virtual-size": 1 << 80}),
         r"virtual-size: 1208925819614629174706176 is outside 0\.\.2\*\*63-1"),
        (lambda r: r["query-block"][0]["inserted"]["image"].update({"virtual-size": 1 << 63}),
         "virtual-size"),
        (lambda r: _prot0(r)["image"].update({"virtual-size": 1 << 64}), "virtual-size"),
        (lambda r: _prot0(r).update({"write_threshold": 1 << 100}), "write_threshold"),
        (lambda r: _prot0(r)["image"].update({"filename": "/dev/loop3\x00"}), "NUL"),
        (lambda r: r["query-block"][0]["inserted"].update({"node-name": "fmt0\x00"}), "NUL"),
        (lambda r: r["query-block"][0].update({"qdev": "x" * 5000}), "NUL byte or over"),
        (lambda r: r["query-blockstats"][0]["stats"].update({"wr_highest_offset": 1 << 63}),
         "wr_highest_offset"),
    ],
)
def test_out_of_range_values_are_malformed(mutate: Any, message: str) -> None:
    record = copy.deepcopy(RECORD)
    mutate(record)
    with pytest.raises(MalformedReply, match=message) as info:
        topology_of(record)
    assert len(str(info.value)) < 300


def test_largest_valid_size_is_taken() -> None:
    record = copy.deepcopy(RECORD)
    record["query-block"][0]["inserted"]["image"]["virtual-size"] = MAX_SIZE
    vda = next(d for d in topology_of(record).drives if d.drive == "vda")
    assert vda.capacity == MAX_SIZE


def test_events_out_of_range_and_nul() -> None:
    topo = topology_of(RECORD)
    with pytest.raises(MalformedReply, match="write-threshold"):
        threshold_event("vm1", {"node-name": "prot0", "write-threshold": 1 << 70,
                                "amount-exceeded": 1}, topo)
    with pytest.raises(MalformedReply, match="NUL"):
        threshold_event("vm1", {"node-name": "prot0\x00", "write-threshold": 1,
                                "amount-exceeded": 1}, topo)
    assert io_error_event("vm1", {"nospace": True, "node-name": "fmt0\x00"}, topo) == (
        True, EnospcPause("vm1", ""))
    assert vm_name({"name": "evil\x00name"}, "stem") == "stem"


def test_persistent_bitmaps_are_read_from_the_format_node() -> None:
    """The honest cap counts the qcow2's persistent bitmaps (name, granularity); a bitmap
    that is not persistent is never stored, and a bad granularity is malformed."""
    record = json.loads(json.dumps(RECORD))
    inserted = next(b["inserted"] for b in record["query-block"]
                    if b.get("inserted", {}).get("node-name") == "fmt0")
    inserted["dirty-bitmaps"] = [
        {"name": "inc1", "granularity": 65536, "persistent": True, "count": 0},
        {"name": "tmp", "granularity": 4096, "persistent": False, "count": 0},
        {"name": "full", "granularity": 4096, "persistent": True, "count": 7},
    ]
    vda = topology_of(record).drives[0]
    assert vda.drive == "vda" and vda.bitmaps == (("full", 4096), ("inc1", 65536))
    inserted["dirty-bitmaps"][0]["granularity"] = 0
    with pytest.raises(MalformedReply):
        topology_of(record)
