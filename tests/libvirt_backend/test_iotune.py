"""``libvirt_backend/iotune.py``: libvirt's ``blockIoTune`` names mapped one to one onto the
neutral limits (pure; libvirtd itself in tests/conformance/test_hypervisor.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.libvirt_backend.iotune import (
    LIBVIRT_NAME,
    IoTuneError,
    limits_from,
    params_of,
    target_of,
)
from autoextend.monitor.protocols import IO_LIMIT_FIELDS, DriveInfo, IoLimits

limit_maps = st.dictionaries(st.sampled_from(IO_LIMIT_FIELDS), st.integers(0, 1 << 40))


@given(fields=limit_maps, group=st.sampled_from(["", "g1"]))
def test_round_trip(fields: dict[str, int], group: str) -> None:
    limits = IoLimits.of(fields, group)
    params = params_of(limits)
    assert set(LIBVIRT_NAME.values()) <= set(params)
    assert ("group_name" in params) == bool(group)
    assert limits_from(params) == limits


@pytest.mark.parametrize("bad", [{"write_bytes_sec": -1}, {"total_iops_sec": "5"},
                                 {"group_name": 3}])
def test_a_bad_answer_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(IoTuneError):
        limits_from(bad)


def test_the_target_of_a_drive() -> None:
    d = DriveInfo("vm", "vda[3]", "vda[3]", "/dev/x", 1, 0, 1)
    assert target_of(d) == "vda"
    with pytest.raises(ValueError, match="block job"):
        target_of(dataclasses.replace(d, drive="vda[4]", job="commit"))
