"""``qmp/iolimits.py``: a device's limits read from ``query-block`` and the
``block_set_io_throttle`` arguments that give them back (pure; QEMU itself in
tests/conformance/test_hypervisor.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor.protocols import IO_LIMIT_FIELDS, IoLimits
from autoextend.qmp.errors import MalformedReply
from autoextend.qmp.iolimits import BASE_FIELDS, parse_io_limits, throttle_args

QDEV = "/machine/peripheral/vda/virtio-backend"


def reply(inserted: dict[str, Any]) -> list[dict[str, Any]]:
    base = {name: 0 for name in BASE_FIELDS}
    return [{"device": "", "qdev": "/machine/peripheral/cd/x"},  # no medium
            {"device": "", "qdev": QDEV, "inserted": {**base, **inserted}}]


limit_maps = st.dictionaries(st.sampled_from(IO_LIMIT_FIELDS), st.integers(0, 1 << 40))


@given(fields=limit_maps, group=st.sampled_from(["", "g1"]))
def test_what_is_read_is_what_the_arguments_set(fields: dict[str, int], group: str) -> None:
    limits = IoLimits.of(fields, group)
    args = throttle_args(QDEV, "", limits)
    assert args["id"] == QDEV and "device" not in args
    assert all(name in args for name in BASE_FIELDS)  # QEMU requires them
    inserted = {k: v for k, v in args.items() if k != "id"}
    assert parse_io_limits("vm", reply(inserted), QDEV, "") == limits


def test_a_device_is_found_by_qdev_or_by_name_else_none() -> None:
    found = parse_io_limits("vm", reply({"bps_wr": 5}), QDEV, "")
    assert found == IoLimits.of({"bps_wr": 5})
    assert parse_io_limits("vm", reply({}), "", "nosuch") is None
    assert parse_io_limits("vm", reply({}), "/machine/peripheral/cd/x", "") is None  # no medium
    legacy = [{"device": "drive0", "inserted": {"bps": 7, "group": "drive0"}}]
    assert parse_io_limits("vm", legacy, "", "drive0") == IoLimits.of({"bps": 7}, "drive0")
    assert throttle_args("", "drive0", IoLimits())["device"] == "drive0"


@pytest.mark.parametrize("bad", [
    {"bps": -1}, {"bps": "1"}, {"bps": True}, {"iops_size": 1 << 63}, {"group": 5},
])
def test_a_bad_value_is_a_malformed_reply(bad: dict[str, Any]) -> None:
    with pytest.raises(MalformedReply):
        parse_io_limits("vm", reply(bad), QDEV, "")


@pytest.mark.parametrize("bad", [{}, "x", [1]])
def test_a_bad_reply_is_a_malformed_reply(bad: Any) -> None:
    with pytest.raises(MalformedReply):
        parse_io_limits("vm", bad, QDEV, "")
