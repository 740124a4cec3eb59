"""Drives in error from QMP replies (pure): every device, with the path under it."""

from __future__ import annotations

from typing import Any

from autoextend.monitor.protocols import DriveIoError
from autoextend.qmp.pauses import drive_errors


def block(qdev: str, status: str, root: str, drv: str = "qcow2") -> dict[str, Any]:
    return {"device": "", "qdev": f"/machine/peripheral/{qdev}/virtio-backend",
            "io-status": status, "inserted": {"node-name": root, "drv": drv, "file": "json:{}"}}


NODES = [
    {"node-name": "a-fmt", "drv": "qcow2", "image": {"filename": "/dev/loop1"}},
    {"node-name": "a-file", "drv": "host_device", "image": {"filename": "/dev/loop1"}},
    {"node-name": "b-fmt", "drv": "raw", "image": {"filename": "json:{...}"}},
    {"node-name": "b-dbg", "drv": "blkdebug", "image": {"filename": "json:{...}"}},
    {"node-name": "b-file", "drv": "file", "image": {"filename": "/var/tmp/b.img"}},
]
STATS = [
    {"node-name": "a-fmt", "parent": {"node-name": "a-file"}},
    {"node-name": "a-file"},
    {"node-name": "b-fmt", "parent": {"node-name": "b-dbg", "parent": {"node-name": "b-file"}}},
]


def test_every_device_in_error_with_its_leaf_path() -> None:
    reply = [block("vda", "ok", "a-fmt"), block("vdb", "nospace", "a-fmt"),
             block("vdc", "failed", "b-fmt", drv="raw")]
    assert drive_errors(reply, NODES, STATS) == (
        DriveIoError("vdb", "/dev/loop1", True),
        DriveIoError("vdc", "/var/tmp/b.img", False),
    )


def test_garbage_is_skipped_not_guessed() -> None:
    assert drive_errors("nope", None, 3) == ()
    reply: list[Any] = [1, {"io-status": 5}, {"qdev": 7, "io-status": "failed"},
                        block("vdd", "failed", "unknown-node")]
    # vdd: no node facts: the inserted filename is all there is
    assert drive_errors(reply, [None], [{"parent": "x"}]) == (
        DriveIoError("vdd", "json:{}", False),)
