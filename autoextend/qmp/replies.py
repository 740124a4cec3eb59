"""Pure translation of QMP replies and events into the monitor's vocabulary.

No I/O here: the functions take the decoded JSON QEMU sent and return :class:`DriveInfo`,
:class:`RunState` or events. A reply of the wrong shape raises :class:`MalformedReply`
naming the command and the key, and is never acted upon. Values are range-checked, not only
typed: sizes and offsets must lie in ``0 <= x < 2**63`` (what a block device and ``lseek`` can
mean), and names and paths must not contain NUL bytes; anything else is malformed.

How a drive is found (QEMU 7.2, ``-blockdev`` + ``-device``)::

    query-block                      BlockBackend per device: qdev, io-status, inserted (root node)
      inserted.node-name = fmt0      root must be a writable qcow2 node
    query-blockstats query-nodes     fmt0's entry has parent.node-name = prot0 (its file child)
    query-named-block-nodes flat     prot0: drv host_device, image.filename, write_threshold, size

The threshold is armed on the protocol node (``prot0``) because its offsets are physical
offsets in the volume; ``wr_highest_offset`` of that node is the allocation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoextend.monitor.protocols import (
    DriveInfo,
    EnospcPause,
    PauseReason,
    RunState,
    ThresholdCrossed,
)
from autoextend.qmp.errors import MalformedReply

PROTOCOL_DRIVER = "host_device"
FORMAT_DRIVER = "qcow2"
#: Filters QEMU 7.2 puts above a drive's image and shows in ``query-block`` (``commit_top``
#: and ``mirror_top`` are implicit and hidden there): a backup's ``copy-before-write``,
#: whose ``file`` child is the image the guest writes.
SHOWN_FILTERS = frozenset({"copy-before-write"})
PERIPHERAL_PREFIX = "/machine/peripheral/"

#: Sizes, offsets and thresholds QEMU reports are int64 in QMP's schema; nothing larger is
#: a real size, and a larger one would overflow the cap arithmetic downstream.
MAX_SIZE = (1 << 63) - 1
#: Longest string taken from a reply (names, paths); QEMU's own are far shorter.
MAX_STRING = 4096

MIGRATION_STATES = frozenset({"inmigrate", "postmigrate", "finish-migrate"})


@dataclass(frozen=True)
class Topology:
    """A VM's monitorable drives and the names QEMU uses for them in events.

    ``by_node`` maps both the protocol node and the root (format) node to the drive name,
    ``by_device`` maps a BlockBackend name (legacy ``-drive`` id) to it.
    """

    drives: tuple[DriveInfo, ...] = ()
    by_node: Mapping[str, str] = field(default_factory=dict)
    by_device: Mapping[str, str] = field(default_factory=dict)
    #: drive -> its device's QOM path (``qdev``), and its BlockBackend (legacy ``-drive``) name
    qdev_of: Mapping[str, str] = field(default_factory=dict)
    device_of: Mapping[str, str] = field(default_factory=dict)

    def drive_of(self, node: str | None, device: str | None = None) -> str | None:
        if node and node in self.by_node:
            return self.by_node[node]
        if device and device in self.by_device:
            return self.by_device[device]
        return None


class _Reader:
    """Typed access to one reply, raising MalformedReply(vm, command, where) on bad shape."""

    def __init__(self, vm: str, command: str) -> None:
        self.vm = vm
        self.command = command

    def fail(self, detail: str) -> MalformedReply:
        return MalformedReply(self.vm, self.command, detail)

    def list_(self, value: object, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(f"{where}: expected a list, got {type(value).__name__}")
        return value

    def dict_(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{where}: expected an object, got {type(value).__name__}")
        return value

    def str_(self, obj: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
        value = obj.get(key, default)
        if not isinstance(value, str):
            raise self.fail(f"{where}.{key}: expected a string, got {_kind(value)}")
        if not clean_string(value):
            raise self.fail(f"{where}.{key}: string with a NUL byte or over {MAX_STRING} chars")
        return value

    def int_(self, obj: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"{where}.{key}: expected a non-negative integer, got {_kind(value)}")
        if not 0 <= value <= MAX_SIZE:
            raise self.fail(f"{where}.{key}: {_short(value)} is outside 0..2**63-1")
        return value

    def bool_(
        self, obj: Mapping[str, Any], key: str, where: str, default: bool | None = None
    ) -> bool:
        value = obj.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}: expected a boolean, got {_kind(value)}")
        return value


def _kind(value: object) -> str:
    return "nothing (key missing)" if value is None else type(value).__name__


def _short(value: int) -> str:
    text = str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit integer"
    return text


def clean_string(value: str) -> bool:
    """A name or path autoextend may use: no NUL byte, not absurdly long."""
    return "\x00" not in value and len(value) <= MAX_STRING


def drive_name(qdev: str, device: str) -> str | None:
    """The stable drive name: the qdev id (``vda``), else the BlockBackend name, else None.

    ``qdev`` is ``/machine/peripheral/vda/virtio-backend`` for virtio-blk, the bare id
    (``sdb``) for scsi-hd, a ``/machine/peripheral-anon/...`` path for a device without id.
    """
    if qdev.startswith(PERIPHERAL_PREFIX):
        ident = qdev[len(PERIPHERAL_PREFIX):].split("/", 1)[0]
        if ident:
            return ident
    elif qdev and not qdev.startswith("/"):
        return qdev
    if device:
        return device
    return qdev or None


def vm_name(query_name_reply: object, socket_stem: str) -> str:
    """``-name`` when QEMU has one, else the socket file's stem. Never raises: a bad reply
    just means no name."""
    if isinstance(query_name_reply, dict):
        name = query_name_reply.get("name")
        if isinstance(name, str) and name.strip() and clean_string(name):
            return name
    return socket_stem


def parse_topology(
    vm: str,
    query_block: object,
    named_nodes: object,
    node_stats: object,
) -> Topology:
    """Build a VM's drives from ``query-block``, ``query-named-block-nodes {flat: true}``
    and ``query-blockstats {query-nodes: true}``.

    Skipped (not errors): devices without media, read-only drives, roots that are not
    qcow2, qcow2 whose file child is not a ``host_device``. ``physical`` is QEMU's cached
    size of the protocol node; the caller replaces it with the device's current size.
    """
    blk = _Reader(vm, "query-block")
    nodes_r = _Reader(vm, "query-named-block-nodes")
    stats_r = _Reader(vm, "query-blockstats")

    nodes: dict[str, dict[str, Any]] = {}
    for i, raw in enumerate(nodes_r.list_(named_nodes, "return")):
        node = nodes_r.dict_(raw, f"[{i}]")
        nodes[nodes_r.str_(node, "node-name", f"[{i}]")] = node

    file_child: dict[str, str] = {}
    highest: dict[str, int] = {}
    for i, raw in enumerate(stats_r.list_(node_stats, "return")):
        entry = stats_r.dict_(raw, f"[{i}]")
        name = entry.get("node-name")
        if not isinstance(name, str) or not name:
            continue  # nodes without a name (implicit ones) cannot be armed
        stats = stats_r.dict_(entry.get("stats"), f"[{i}].stats")
        highest[name] = stats_r.int_(stats, "wr_highest_offset", f"[{i}].stats")
        parent = entry.get("parent")
        if parent is not None:
            parent = stats_r.dict_(parent, f"[{i}].parent")
            child = parent.get("node-name")
            if isinstance(child, str) and child:
                file_child[name] = child

    drives: list[DriveInfo] = []
    by_node: dict[str, str] = {}
    by_device: dict[str, str] = {}
    qdev_of: dict[str, str] = {}
    device_of: dict[str, str] = {}
    for i, raw in enumerate(blk.list_(query_block, "return")):
        where = f"[{i}]"
        info = blk.dict_(raw, where)
        device = blk.str_(info, "device", where, default="")
        qdev = blk.str_(info, "qdev", where, default="")
        name = drive_name(qdev, device)
        if name is None:
            continue
        inserted = info.get("inserted")
        if inserted is None:
            continue
        inserted = blk.dict_(inserted, f"{where}.inserted")
        if blk.bool_(inserted, "ro", f"{where}.inserted"):
            continue
        drv = blk.str_(inserted, "drv", f"{where}.inserted")
        root = shown = blk.str_(inserted, "node-name", f"{where}.inserted")
        filtered = drv in SHOWN_FILTERS
        if filtered:  # a running backup: the image is the filter's file child
            below = file_child.get(root)
            child = nodes.get(below) if below else None
            if below is None or child is None:
                continue
            fw = f"query-named-block-nodes[{below}]"
            if nodes_r.bool_(child, "ro", fw):
                continue
            drv, root, where_image = nodes_r.str_(child, "drv", fw), below, fw
            image = nodes_r.dict_(child.get("image"), f"{fw}.image")
            node, node_r = child, nodes_r
        else:
            where_image = f"{where}.inserted"
            image = blk.dict_(inserted.get("image"), f"{where}.inserted.image")
            node, node_r = inserted, blk
        if drv != FORMAT_DRIVER:
            continue
        capacity = (nodes_r if filtered else blk).int_(image, "virtual-size",
                                                       f"{where_image}.image")
        prot_name = file_child.get(root)
        prot = nodes.get(prot_name) if prot_name else None
        if prot_name is None or prot is None:
            continue
        pw = f"query-named-block-nodes[{prot_name}]"
        if nodes_r.str_(prot, "drv", pw) != PROTOCOL_DRIVER:
            continue
        prot_image = nodes_r.dict_(prot.get("image"), f"{pw}.image")
        path = nodes_r.str_(prot_image, "filename", f"{pw}.image", default=prot.get("file"))
        drives.append(
            DriveInfo(
                vm=vm,
                drive=name,
                node=prot_name,
                path=path,
                capacity=capacity,
                allocation=highest.get(prot_name, 0),
                physical=nodes_r.int_(prot_image, "virtual-size", f"{pw}.image"),
                threshold=nodes_r.int_(prot, "write_threshold", pw, default=0),
                cluster_size=node_r.int_(image, "cluster-size", f"{where_image}.image",
                                         default=0),
                bitmaps=persistent_bitmaps(node_r, node, where_image),
            )
        )
        by_node[prot_name] = name
        by_node[root] = by_node[shown] = name
        if device:
            by_device[device] = name
            device_of[name] = device
        if qdev.startswith("/"):
            qdev_of[name] = qdev
    return Topology(tuple(drives), by_node, by_device, qdev_of, device_of)


def persistent_bitmaps(r: _Reader, node: Mapping[str, Any], where: str
                       ) -> tuple[tuple[str, int], ...]:
    """The node's persistent dirty bitmaps as (name, granularity), sorted (what the qcow2
    stores, and what the honest cap counts: ``monitor/policy.py``)."""
    out = []
    for i, raw in enumerate(r.list_(node.get("dirty-bitmaps", []), f"{where}.dirty-bitmaps")):
        bw = f"{where}.dirty-bitmaps[{i}]"
        bitmap = r.dict_(raw, bw)
        if not r.bool_(bitmap, "persistent", bw, default=False):
            continue
        granularity = r.int_(bitmap, "granularity", bw)
        if granularity <= 0:
            raise r.fail(f"{bw}.granularity: {granularity} is not positive")
        out.append((r.str_(bitmap, "name", bw, default=""), granularity))
    return tuple(sorted(out))


def parse_io_status(vm: str, query_block: object) -> dict[str, str]:
    """Drive name -> io-status (``ok``/``failed``/``nospace``) of each device that has one."""
    r = _Reader(vm, "query-block")
    statuses: dict[str, str] = {}
    for i, raw in enumerate(r.list_(query_block, "return")):
        info = r.dict_(raw, f"[{i}]")
        name = drive_name(
            r.str_(info, "qdev", f"[{i}]", default=""), r.str_(info, "device", f"[{i}]", default="")
        )
        if name is not None and "io-status" in info:
            statuses[name] = r.str_(info, "io-status", f"[{i}]")
    return statuses


def drive_set(vm: str, query_block: object) -> frozenset[tuple[str, str]]:
    """(drive name, root node) of every device with media: changes on hot-plug/unplug,
    media change or a block job that replaced the root node."""
    r = _Reader(vm, "query-block")
    found: set[tuple[str, str]] = set()
    for i, raw in enumerate(r.list_(query_block, "return")):
        info = r.dict_(raw, f"[{i}]")
        name = drive_name(
            r.str_(info, "qdev", f"[{i}]", default=""), r.str_(info, "device", f"[{i}]", default="")
        )
        inserted = info.get("inserted")
        if name is None or not isinstance(inserted, dict):
            continue
        node = inserted.get("node-name")
        found.add((name, node if isinstance(node, str) and clean_string(node) else ""))
    return frozenset(found)


def classify_pause(
    status: str, io_status: Iterable[str], saw_nospace: bool = False
) -> PauseReason:
    """Why a stopped VM is stopped, from ``query-status`` and the devices' io-status.

    ``io-error`` is ENOSPC only when no device reports another failure and some device
    reports ``nospace`` (or, for devices without io-status, a ``BLOCK_IO_ERROR`` with
    ``nospace`` was seen since the last resume). Anything unknown is OTHER: never resumed.
    """
    if status == "paused":
        return PauseReason.USER
    if status in MIGRATION_STATES:
        return PauseReason.MIGRATION
    if status == "io-error":
        statuses = set(io_status)
        if "failed" in statuses:
            return PauseReason.IO_ERROR
        if "nospace" in statuses or saw_nospace:
            return PauseReason.ENOSPC
        return PauseReason.IO_ERROR
    return PauseReason.OTHER


def parse_run_state(
    vm: str, query_status: object, io_status: Iterable[str], saw_nospace: bool = False
) -> RunState:
    """RunState from a ``query-status`` reply (``{"running": bool, "status": str}``)."""
    r = _Reader(vm, "query-status")
    reply = r.dict_(query_status, "return")
    running = r.bool_(reply, "running", "return")
    status = r.str_(reply, "status", "return")
    if running:
        return RunState(running=True)
    return RunState(running=False, pause_reason=classify_pause(status, io_status, saw_nospace),
                    prelaunch=status == "prelaunch")


def threshold_event(vm: str, data: object, topology: Topology) -> ThresholdCrossed | None:
    """BLOCK_WRITE_THRESHOLD -> ThresholdCrossed, or None for a node that is not a drive's."""
    r = _Reader(vm, "BLOCK_WRITE_THRESHOLD")
    body = r.dict_(data, "data")
    node = r.str_(body, "node-name", "data")
    drive = topology.drive_of(node)
    if drive is None:
        return None
    return ThresholdCrossed(
        vm=vm,
        drive=drive,
        threshold=r.int_(body, "write-threshold", "data"),
        excess=r.int_(body, "amount-exceeded", "data"),
    )


def io_error_event(vm: str, data: object, topology: Topology) -> tuple[bool, EnospcPause | None]:
    """BLOCK_IO_ERROR -> (nospace, EnospcPause or None).

    ``node-name`` is the device's root node, ``device`` may be empty; an unknown drive gives
    an EnospcPause with an empty drive name so the monitor still learns of it.
    """
    r = _Reader(vm, "BLOCK_IO_ERROR")
    body = r.dict_(data, "data")
    nospace = r.bool_(body, "nospace", "data", default=False)
    if not nospace:
        return False, None
    node = body.get("node-name")
    device = body.get("device")
    drive = topology.drive_of(
        node if isinstance(node, str) and clean_string(node) else None,
        device if isinstance(device, str) and clean_string(device) else None,
    )
    return True, EnospcPause(vm=vm, drive=drive or "")
