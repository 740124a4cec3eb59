"""Block jobs over QMP: which volumes a job writes besides the guest's top image.

Pure translation, no I/O. Inputs are ``query-block-jobs``, ``x-debug-query-block-graph``,
``query-named-block-nodes {flat: true}`` and ``query-blockstats {query-nodes: true}``.

How a job's target is found (QEMU 7.2, seen with ``block-commit`` and ``blockdev-mirror``)::

    x-debug-query-block-graph
      node {type: block-job, name: <job id>}
        edge "target" -> the node the job writes (commit base, mirror target, backup target)
        edge "base"   -> the base of an intermediate commit (older QEMUs name it so)
        other edges   -> what it reads ("source", "main node", "intermediate node")
      node {type: block-driver, name: bfmt} edge "file" -> bfile (host_device)
    query-block-jobs: type, device (= job id), status, io-status (nospace when paused by
      on-error=enospc), paused

The drive a job belongs to is the one whose root node is reachable from what the job reads.
The target is monitored like a drive named ``<drive>#<job id>``, its threshold on the
target's protocol node, whose offsets are physical offsets in the target volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoextend.monitor.protocols import DriveInfo
from autoextend.qmp.replies import FORMAT_DRIVER, PROTOCOL_DRIVER, _Reader

#: Edge names from a job node to the node it writes.
TARGET_EDGES = frozenset({"target", "base"})
#: The job events the backend listens to (``qmp/jobwatch.py`` translates them).
JOB_EVENT_NAMES = ("JOB_STATUS_CHANGE", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED")
#: Job kinds whose target autoextend monitors (``stream`` writes the top: already a drive).
KINDS = frozenset({"commit", "mirror", "backup"})


@dataclass(frozen=True)
class Job:
    """One job from ``query-block-jobs``."""

    job_id: str
    kind: str
    status: str
    nospace: bool     # paused (or failing) for lack of space
    paused: bool


@dataclass(frozen=True)
class Graph:
    """``x-debug-query-block-graph``: block-driver node names, job names, and edges."""

    children: Mapping[str, tuple[tuple[str, str], ...]]  # parent name -> ((edge, child), ...)
    jobs: frozenset[str]


def parse_jobs(vm: str, reply: object) -> list[Job]:
    r = _Reader(vm, "query-block-jobs")
    jobs: list[Job] = []
    for i, raw in enumerate(r.list_(reply, "return")):
        entry = r.dict_(raw, f"[{i}]")
        where = f"[{i}]"
        jobs.append(Job(
            job_id=r.str_(entry, "device", where),
            kind=r.str_(entry, "type", where),
            status=r.str_(entry, "status", where, default=""),
            nospace=r.str_(entry, "io-status", where, default="ok") == "nospace",
            paused=r.bool_(entry, "paused", where, default=False),
        ))
    return jobs


def parse_graph(vm: str, reply: object) -> Graph:
    r = _Reader(vm, "x-debug-query-block-graph")
    body = r.dict_(reply, "return")
    names: dict[int, str] = {}
    jobs: set[str] = set()
    for i, raw in enumerate(r.list_(body.get("nodes"), "nodes")):
        node = r.dict_(raw, f"nodes[{i}]")
        ident = r.int_(node, "id", f"nodes[{i}]")
        kind = r.str_(node, "type", f"nodes[{i}]")
        name = r.str_(node, "name", f"nodes[{i}]", default="")
        if kind == "block-job":
            jobs.add(name)
            names[ident] = name
        elif kind == "block-driver" and name:
            names[ident] = name
    children: dict[str, list[tuple[str, str]]] = {}
    for i, raw in enumerate(r.list_(body.get("edges"), "edges")):
        edge = r.dict_(raw, f"edges[{i}]")
        parent = names.get(r.int_(edge, "parent", f"edges[{i}]"))
        child = names.get(r.int_(edge, "child", f"edges[{i}]"))
        if parent is None or child is None:
            continue
        children.setdefault(parent, []).append((r.str_(edge, "name", f"edges[{i}]"), child))
    return Graph({k: tuple(v) for k, v in children.items()}, frozenset(jobs))


def _below(graph: Graph, start: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(child for _, child in graph.children.get(name, ()))
    return seen


def job_targets(
    vm: str,
    jobs: list[Job],
    graph: Graph,
    nodes: Mapping[str, Mapping[str, Any]],
    highest: Mapping[str, int],
    by_node: Mapping[str, str],
) -> list[DriveInfo]:
    """A DriveInfo per job target on a qcow2-over-host_device node.

    ``nodes`` is query-named-block-nodes by node name, ``highest`` each node's
    ``wr_highest_offset``, ``by_node`` the drives' node names (root and protocol) -> drive.
    A target that is already a drive's node, or whose drive is unknown, is skipped.
    """
    r = _Reader(vm, "query-named-block-nodes")
    found: list[DriveInfo] = []
    for job in jobs:
        if job.kind not in KINDS or job.job_id not in graph.jobs:
            continue
        edges = graph.children.get(job.job_id, ())
        targets = [child for name, child in edges if name in TARGET_EDGES]
        reads = [child for name, child in edges if name not in TARGET_EDGES]
        drive = next((by_node[n] for n in sorted(_below(graph, reads)) if n in by_node), None)
        if drive is None:
            continue
        for target in targets:
            if target in by_node:
                continue
            fmt = nodes.get(target)
            files = [c for name, c in graph.children.get(target, ()) if name == "file"]
            if fmt is None or not files or fmt.get("drv") != FORMAT_DRIVER:
                continue
            prot = nodes.get(files[0])
            if prot is None or prot.get("drv") != PROTOCOL_DRIVER:
                continue
            pw = f"[{files[0]}]"
            image = r.dict_(prot.get("image"), f"{pw}.image")
            fmt_image = r.dict_(fmt.get("image"), f"[{target}].image")
            found.append(DriveInfo(
                vm=vm,
                drive=f"{drive}#{job.job_id}",
                node=files[0],
                path=r.str_(image, "filename", f"{pw}.image", default=prot.get("file")),
                capacity=r.int_(fmt_image, "virtual-size", f"[{target}].image"),
                allocation=highest.get(files[0], 0),
                physical=r.int_(image, "virtual-size", f"{pw}.image"),
                threshold=r.int_(prot, "write_threshold", pw, default=0),
                job=job.kind,
                job_id=job.job_id,
                job_paused=job.paused and job.nospace,
            ))
    return found


def job_ended(data: object) -> tuple[str, str, str] | None:
    """BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED data -> (job id, kind, error) or None."""
    if not isinstance(data, dict):
        return None
    job_id, kind, error = data.get("device"), data.get("type"), data.get("error", "")
    if not isinstance(job_id, str) or not isinstance(kind, str) or not isinstance(error, str):
        return None
    return job_id[:256], kind[:32], error[:500]


def is_nospace(error: str) -> bool:
    """QEMU's message for ENOSPC (strerror), as a job's ``error`` carries it."""
    return "No space left on device" in error
