"""Which drives of a paused VM are in error, and what lies under each (for the monitor).

From ``query-block`` (each device's ``io-status``: ``ok``, ``failed``, ``nospace``) and the
node graph (``query-blockstats {query-nodes: true}``: each node's file child, nested as
``parent``; ``query-named-block-nodes {flat: true}``: each node's filename). Every device is
reported, whatever its format: a raw drive or a qcow2 outside the pool in error must reach
the monitor, which then knows the pause is not its own to resume.
"""

from __future__ import annotations

from typing import Any

from autoextend.monitor.protocols import DriveIoError
from autoextend.qmp.replies import drive_name


def _leaf_nodes(node_stats: object) -> dict[str, str]:
    """Node name -> the name of the bottom of its file-child chain (itself if none)."""
    leaves: dict[str, str] = {}
    if not isinstance(node_stats, list):
        return leaves
    for entry in node_stats:
        if not isinstance(entry, dict):
            continue
        name = entry.get("node-name")
        if not isinstance(name, str) or not name:
            continue
        cur: Any = entry
        leaf = name
        for _ in range(64):  # a chain of file children; bounded against garbage
            parent = cur.get("parent")
            if not isinstance(parent, dict):
                break
            cur = parent
            child = cur.get("node-name")
            if isinstance(child, str) and child:
                leaf = child
        leaves[name] = leaf
    return leaves


def _filenames(named_nodes: object) -> dict[str, str]:
    names: dict[str, str] = {}
    if not isinstance(named_nodes, list):
        return names
    for node in named_nodes:
        if not isinstance(node, dict):
            continue
        name = node.get("node-name")
        image = node.get("image")
        filename = image.get("filename") if isinstance(image, dict) else None
        if not isinstance(filename, str):
            filename = node.get("file")
        if isinstance(name, str) and isinstance(filename, str):
            names[name] = filename
    return names


def drive_errors(query_block: object, named_nodes: object, node_stats: object) -> tuple[
    DriveIoError, ...
]:
    """Every device whose io-status is not ``ok``, with the path at the bottom of its chain.

    Garbage is skipped, never guessed at: a device without a usable name or io-status is
    left out (the pause is then classified from ``query-status`` alone).
    """
    if not isinstance(query_block, list):
        return ()
    leaves = _leaf_nodes(node_stats)
    files = _filenames(named_nodes)
    found: list[DriveIoError] = []
    for info in query_block:
        if not isinstance(info, dict):
            continue
        status = info.get("io-status")
        if not isinstance(status, str) or status == "ok":
            continue
        qdev, device = info.get("qdev", ""), info.get("device", "")
        name = drive_name(qdev if isinstance(qdev, str) else "",
                          device if isinstance(device, str) else "")
        if name is None:
            continue
        inserted = info.get("inserted")
        path = ""
        if isinstance(inserted, dict):
            root = inserted.get("node-name")
            if isinstance(root, str):
                path = files.get(leaves.get(root, root), "")
            if not path and isinstance(inserted.get("file"), str):
                path = inserted["file"]
        found.append(DriveIoError(drive=name, path=path, nospace=status == "nospace"))
    return tuple(found)
