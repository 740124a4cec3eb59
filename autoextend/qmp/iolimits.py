"""A drive's I/O limits over QMP: read from ``query-block``, set with ``block_set_io_throttle``.

``query-block`` reports a device's limits in its ``inserted`` entry: the six base fields
always, the burst fields (``*_max``, ``*_max_length``), ``iops_size`` and ``group`` only when
set. ``block_set_io_throttle`` takes the six base fields (required) and the others
(optional) and replaces every limit at once; all zeros turn throttling off (and take the
drive out of its group). So what was read is what must be given back to restore it.

The device is named by its QOM path (``query-block``'s ``qdev``, which the command's ``id``
accepts), else by its BlockBackend name (legacy ``-drive``).
"""

from __future__ import annotations

from typing import Any

from autoextend.monitor.protocols import IO_LIMIT_FIELDS, IoLimits
from autoextend.qmp.errors import MalformedReply
from autoextend.qmp.replies import MAX_SIZE

BASE_FIELDS = IO_LIMIT_FIELDS[:6]


def parse_io_limits(vm: str, query_block: object, qdev: str, device: str) -> IoLimits | None:
    """The limits of the device ``qdev`` (or ``device``) in a ``query-block`` reply; None
    when the reply has no such device with a medium."""
    if not isinstance(query_block, list):
        raise MalformedReply(vm, "query-block", "the reply is not a list")
    for entry in query_block:
        if not isinstance(entry, dict):
            raise MalformedReply(vm, "query-block", "an entry is not an object")
        if not ((qdev and entry.get("qdev") == qdev) or (device and entry.get("device") == device)):
            continue
        inserted = entry.get("inserted")
        if not isinstance(inserted, dict):
            return None
        return _limits(vm, inserted)
    return None


def _limits(vm: str, inserted: dict[str, Any]) -> IoLimits:
    fields: dict[str, int] = {}
    for name in IO_LIMIT_FIELDS:
        value = inserted.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
            raise MalformedReply(vm, "query-block", f"inserted.{name} is not a size: {value!r}")
        fields[name] = value
    group = inserted.get("group", "")
    if not isinstance(group, str) or len(group) > 1024:
        raise MalformedReply(vm, "query-block", "inserted.group is not a short string")
    return IoLimits.of(fields, group)


def throttle_args(qdev: str, device: str, limits: IoLimits) -> dict[str, Any]:
    """``block_set_io_throttle``'s arguments that set exactly ``limits``."""
    args: dict[str, Any] = {"id": qdev} if qdev else {"device": device}
    for name in BASE_FIELDS:
        args[name] = limits.get(name)
    for name, value in limits.values:
        args[name] = value
    if limits.group:
        args["group"] = limits.group
    return args
