"""The QMP session's side of block jobs: ask QEMU for jobs, add their targets to the
drives, measure a commit's data once at its start, and turn job events into ours.

The pure parsing is in ``qmp/jobs.py``; this module does the queries. ``Measure`` is
``qemu-img measure`` by default (injected so unit tests need no qemu-img).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from autoextend.logs import get_logger
from autoextend.monitor.protocols import DrivesChanged, HypervisorEvent, JobEnded
from autoextend.qemuimg import Measure, qemu_img_measure
from autoextend.qmp.connection import QmpConnection
from autoextend.qmp.errors import QmpCommandFailed
from autoextend.qmp.jobs import is_nospace, job_ended, job_targets, parse_graph, parse_jobs
from autoextend.qmp.replies import Topology

log = get_logger("qmp")


#: Job status changes after which the set of job targets (or the top image) may differ.
RESYNC_STATUSES = frozenset({"running", "paused", "ready", "concluded", "null", "aborting"})


class JobWatch:
    def __init__(self, measure: Measure | None = None) -> None:
        self._measure = measure or qemu_img_measure
        self._needs: dict[str, int] = {}  # job id -> measured need (0: could not measure)

    async def add_targets(self, vm: str, conn: QmpConnection, topology: Topology,
                          nodes_reply: object, stats_reply: object) -> Topology:
        """``topology`` plus one drive per job target (unchanged when no job runs)."""
        try:
            jobs = parse_jobs(vm, await conn.execute("query-block-jobs"))
        except QmpCommandFailed:
            return topology  # a QEMU (or test double) without jobs
        if not jobs:
            self._needs.clear()
            return topology
        graph = parse_graph(vm, await conn.execute("x-debug-query-block-graph"))
        nodes = {n["node-name"]: n for n in nodes_reply if isinstance(n, dict)} \
            if isinstance(nodes_reply, list) else {}
        highest: dict[str, int] = {}
        for entry in stats_reply if isinstance(stats_reply, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("node-name"), str):
                highest[entry["node-name"]] = entry["stats"]["wr_highest_offset"]
        targets = job_targets(vm, jobs, graph, nodes, highest, topology.by_node)
        if not targets:
            return topology
        targets = [await self._with_need(t, graph, nodes, highest) for t in targets]
        by_node = dict(topology.by_node)
        for t in targets:
            by_node[t.node] = t.drive
            for edge, child in graph.children.get(t.job_id, ()):
                if edge in ("target", "base"):
                    by_node.setdefault(child, t.drive)
        live = {j.job_id for j in jobs}
        for job_id in set(self._needs) - live:
            del self._needs[job_id]
        return dataclasses.replace(topology, drives=topology.drives + tuple(targets),
                                   by_node=by_node)

    async def _with_need(self, target: Any, graph: Any, nodes: dict[str, Any],
                         highest: dict[str, int]) -> Any:
        """A commit's base gets ``job_need``: what the merged data needs, measured once."""
        if target.job != "commit":
            return target
        if target.job_id not in self._needs:
            self._needs[target.job_id] = await self._measure_commit(target, graph, nodes,
                                                                    highest)
        need = self._needs[target.job_id]
        return dataclasses.replace(target, job_need=need) if need else target

    async def _measure_commit(self, target: Any, graph: Any, nodes: dict[str, Any],
                              highest: dict[str, int]) -> int:
        """``qemu-img measure`` of the commit's top (its chain followed). When QEMU's locks
        refuse that (seen for an intermediate commit's top), an upper bound: the base's
        highest written offset plus that of every image being merged into it."""
        edges = graph.children.get(target.job_id, ())
        sources = [child for name, child in edges if name == "source"]
        if not sources:  # an intermediate commit: the top is below the job's main node
            sources = [child for name, child in edges if name == "intermediate node"]
        files = [c for s in sources for n, c in graph.children.get(s, ()) if n == "file"]
        for file in files[:1]:
            node = nodes.get(file)
            image = node.get("image") if isinstance(node, dict) else None
            path = image.get("filename") if isinstance(image, dict) else None
            if isinstance(path, str):
                measured = await self._measure(path)
                log.info("commit measured", vm=target.vm, drive=target.drive,
                         job_id=target.job_id, top=path, required=measured)
                if measured:
                    return measured
        if not files:
            return 0
        estimate = int(target.allocation) + sum(highest.get(f, 0) for f in set(files))
        log.info("commit need estimated", vm=target.vm, drive=target.drive,
                 job_id=target.job_id, required=estimate)
        return estimate


def job_event(vm: str, name: str, data: Any, vlog: Any) -> list[HypervisorEvent]:
    """JOB_STATUS_CHANGE and BLOCK_JOB_COMPLETED/CANCELLED -> our events."""
    if name == "JOB_STATUS_CHANGE":
        status = data.get("status") if isinstance(data, dict) else None
        return [DrivesChanged(vm)] if status in RESYNC_STATUSES else []
    if name in ("BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
        ended = job_ended(data)
        if ended is None:
            return [DrivesChanged(vm)]
        job_id, kind, error = ended
        vlog.info("block job ended", job_id=job_id, job=kind, error=error or None,
                  cancelled=name == "BLOCK_JOB_CANCELLED")
        return [JobEnded(vm, job_id, kind, error, is_nospace(error)), DrivesChanged(vm)]
    return []
