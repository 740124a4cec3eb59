"""lvm2's JSON report with values no real lvm2 prints: each is a ReportFormatError (never a
ValueError, RecursionError or a number the extend path would choke on)."""

from __future__ import annotations

import json

import pytest

from autoextend.lvm import loopdev, report
from autoextend.lvm.errors import ReportFormatError

ROW = {"vg_name": "vg", "lv_name": "lv", "lv_uuid": "u", "lv_size": str(4 << 20),
       "vg_extent_size": str(4 << 20), "lv_tags": "", "lv_active": "active",
       "lv_attr": "-wi-a-----"}


def lvs_json(**change: str) -> str:
    return json.dumps({"report": [{"lv": [{**ROW, **change}]}]})


def test_baseline_parses() -> None:
    (lv,) = report.parse_lvs(lvs_json())
    assert lv.size == 4 << 20


@pytest.mark.parametrize("change", [
    {"lv_size": str(1 << 63)},
    {"lv_size": str(1 << 64)},
    {"lv_size": "9" * 5000},
    {"vg_extent_size": "9" * 20},
    {"lv_name": "lv\x00x"},
    {"vg_name": "v" * 5000},
])
def test_out_of_range_values(change: dict[str, str]) -> None:
    with pytest.raises(ReportFormatError) as info:
        report.parse_lvs(lvs_json(**change))
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("text", [
    '{"report": [' + "9" * 5000 + "]}",      # json.loads raises a plain ValueError
    "[" * 100_000 + "]" * 100_000,
    '{"report": [{"lv": [[[[[[[[[[]]]]]]]]]]}]}',
])
def test_hostile_documents(text: str) -> None:
    with pytest.raises(ReportFormatError):
        report.parse_lvs(text)


def test_largest_size_is_taken() -> None:
    extent = 4 << 20
    size = ((1 << 63) - 1) // extent * extent
    (lv,) = report.parse_lvs(lvs_json(lv_size=str(size)))
    assert lv.size == size


@pytest.mark.parametrize("text", [
    '{"loopdevices": [{"name": "/dev/loop3\\u0000", "log-sec": 512}]}',
    '{"loopdevices": [{"name": "loop3", "log-sec": 512}]}',
    '{"loopdevices": [{"name": "/dev/loop3", "log-sec": ' + "9" * 5000 + "}]}",
    '{"loopdevices": [{"name": "/dev/loop3", "log-sec": 3}]}',
    "[" * 100_000,
])
def test_hostile_losetup_output(text: str) -> None:
    with pytest.raises(ValueError, match="unexpected losetup"):
        loopdev.parse_list(text)
