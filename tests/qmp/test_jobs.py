"""Block-job targets from QMP replies (pure parsing), with replies seen from QEMU 7.2
during an active ``block-commit`` paused by ``on-error=enospc``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.logs import get_logger
from autoextend.monitor.protocols import DrivesChanged, JobEnded
from autoextend.qmp.errors import MalformedReply
from autoextend.qmp.jobs import is_nospace, job_ended, job_targets, parse_graph, parse_jobs
from autoextend.qmp.jobwatch import job_event
from autoextend.qmp.replies import parse_topology

MiB = 1 << 20

JOBS = [{"auto-finalize": True, "io-status": "nospace", "device": "c1", "auto-dismiss": True,
         "busy": False, "len": 41943040, "offset": 15728640, "status": "paused",
         "paused": True, "speed": 0, "ready": False, "type": "commit"}]

GRAPH = {"edges": [
    {"name": "backing", "parent": 2, "child": 6, "perm": [], "shared-perm": []},
    {"name": "file", "parent": 6, "child": 8, "perm": [], "shared-perm": []},
    {"name": "backing", "parent": 6, "child": 4, "perm": [], "shared-perm": []},
    {"name": "file", "parent": 4, "child": 7, "perm": [], "shared-perm": []},
    {"name": "main node", "parent": 5, "child": 2, "perm": [], "shared-perm": []},
    {"name": "source", "parent": 5, "child": 6, "perm": [], "shared-perm": []},
    {"name": "target", "parent": 5, "child": 4, "perm": [], "shared-perm": []},
    {"name": "root", "parent": 3, "child": 4, "perm": [], "shared-perm": []},
    {"name": "root", "parent": 1, "child": 2, "perm": [], "shared-perm": []}],
    "nodes": [{"name": "#block087", "type": "block-driver", "id": 2},
              {"name": "fmt0", "type": "block-driver", "id": 6},
              {"name": "file0", "type": "block-driver", "id": 8},
              {"name": "bfmt", "type": "block-driver", "id": 4},
              {"name": "bfile", "type": "block-driver", "id": 7},
              {"name": "c1", "type": "block-job", "id": 5},
              {"name": "", "type": "block-backend", "id": 3},
              {"name": "/machine/peripheral/vda/virtio-backend", "type": "block-backend",
               "id": 1}]}


def node(name: str, drv: str, path: str, size: int, threshold: int = 0) -> dict[str, Any]:
    return {"node-name": name, "drv": drv, "file": path, "ro": False,
            "write_threshold": threshold,
            "image": {"filename": path, "virtual-size": size}}


NODES = {
    "fmt0": node("fmt0", "qcow2", "/dev/loop1", 256 * MiB),
    "file0": node("file0", "host_device", "/dev/loop1", 64 * MiB),
    "bfmt": node("bfmt", "qcow2", "/dev/loop0", 256 * MiB),
    "bfile": node("bfile", "host_device", "/dev/loop0", 16 * MiB, 8 * MiB),
    "#block087": node("#block087", "commit_top", "/dev/loop1", 256 * MiB),
}
HIGHEST = {"bfile": 18153472, "file0": 42270720}
BY_NODE = {"fmt0": "vda", "file0": "vda"}


def test_active_commit_target_is_the_base() -> None:
    jobs = parse_jobs("vm1", JOBS)
    assert jobs[0].job_id == "c1" and jobs[0].kind == "commit" and jobs[0].nospace
    targets = job_targets("vm1", jobs, parse_graph("vm1", GRAPH), NODES, HIGHEST, BY_NODE)
    assert len(targets) == 1
    t = targets[0]
    assert (t.drive, t.node, t.path, t.job, t.job_id) == ("vda#c1", "bfile", "/dev/loop0",
                                                           "commit", "c1")
    assert (t.capacity, t.physical, t.allocation, t.threshold) == (
        256 * MiB, 16 * MiB, 18153472, 8 * MiB)
    assert t.job_paused


def test_running_job_is_not_paused() -> None:
    running = [dict(JOBS[0], status="running", paused=False, **{"io-status": "ok"})]
    [t] = job_targets("vm1", parse_jobs("vm1", running), parse_graph("vm1", GRAPH), NODES,
                      HIGHEST, BY_NODE)
    assert not t.job_paused


def test_target_of_unknown_drive_or_not_on_a_device_is_skipped() -> None:
    graph = parse_graph("vm1", GRAPH)
    jobs = parse_jobs("vm1", JOBS)
    assert job_targets("vm1", jobs, graph, NODES, HIGHEST, {}) == []
    raw = dict(NODES, bfile=node("bfile", "file", "/tmp/x.img", 16 * MiB))
    assert job_targets("vm1", jobs, graph, raw, HIGHEST, BY_NODE) == []
    stream = [dict(JOBS[0], type="stream")]
    assert job_targets("vm1", parse_jobs("vm1", stream), graph, NODES, HIGHEST, BY_NODE) == []


@pytest.mark.parametrize("reply", [{}, [1], [{"device": 3, "type": "commit"}],
                                   [{"device": "c1", "type": "commit", "paused": "yes"}]])
def test_malformed_jobs_reply(reply: object) -> None:
    with pytest.raises(MalformedReply):
        parse_jobs("vm1", reply)


@given(st.recursive(st.none() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                        max_size=3),
                    max_leaves=10))
def test_graph_parser_never_crashes_otherwise(reply: object) -> None:
    try:
        parse_graph("vm1", reply)
    except MalformedReply:
        pass


def test_job_events() -> None:
    log = get_logger("test")
    assert job_event("vm1", "JOB_STATUS_CHANGE", {"id": "c1", "status": "paused"}, log) == [
        DrivesChanged("vm1")]
    assert job_event("vm1", "JOB_STATUS_CHANGE", {"id": "c1", "status": "created"}, log) == []
    failed = job_event("vm1", "BLOCK_JOB_COMPLETED", {
        "device": "c1", "type": "commit", "len": 1, "offset": 0, "speed": 0,
        "error": "No space left on device"}, log)
    assert failed == [JobEnded("vm1", "c1", "commit", "No space left on device", True),
                      DrivesChanged("vm1")]
    ok = job_event("vm1", "BLOCK_JOB_COMPLETED", {"device": "m1", "type": "mirror"}, log)
    assert ok[0] == JobEnded("vm1", "m1", "mirror", "", False)
    assert job_event("vm1", "BLOCK_JOB_ERROR", {"device": "c1"}, log) == []
    assert job_ended({"device": 1}) is None
    assert not is_nospace("Input/output error")


BACKUP = json.loads((Path(__file__).parent / "data" / "backup_running.json").read_text())


def test_drive_and_target_while_a_backup_runs() -> None:
    """During ``blockdev-backup`` the device's root in ``query-block`` is the job's
    ``copy-before-write`` filter (recorded from QEMU 7.2): the drive is the qcow2 below it,
    and the backup's target is a job target of that drive."""
    topology = parse_topology("vm1", BACKUP["query-block"],
                              BACKUP["query-named-block-nodes"], BACKUP["query-blockstats"])
    [drive] = topology.drives
    assert (drive.drive, drive.node, drive.path, drive.capacity) == (
        "vda", "ptop", "/dev/loop21", 256 * MiB)
    highest = {e["node-name"]: e["stats"]["wr_highest_offset"]
               for e in BACKUP["query-blockstats"] if e.get("node-name")}
    nodes = {n["node-name"]: n for n in BACKUP["query-named-block-nodes"]}
    [target] = job_targets("vm1", parse_jobs("vm1", BACKUP["query-block-jobs"]),
                           parse_graph("vm1", BACKUP["x-debug-query-block-graph"]), nodes,
                           highest, topology.by_node)
    assert (target.drive, target.node, target.path, target.job, target.job_id) == (
        "vda#b1", "pbak", "/dev/loop23", "backup", "b1")


def test_a_filter_without_a_known_child_is_skipped() -> None:
    stats = [e for e in BACKUP["query-blockstats"]
             if e.get("node-name") not in ("ftop",) and not str(e.get("node-name", ""))
             .startswith("#")]
    topology = parse_topology("vm1", BACKUP["query-block"],
                              BACKUP["query-named-block-nodes"], stats)
    assert topology.drives == ()
