"""Pure parts of the LVM layer: names and paths, extent rounding, report parsing, shell
quoting, error sorting, the --config string."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.lvm import report
from autoextend.lvm.errors import (
    InsufficientFreeExtents,
    LvmCommandError,
    LvmLockError,
    MissingPvError,
    NoSuchLogicalVolume,
    NoSuchVolumeGroup,
    ReportFormatError,
    classify_failure,
    display_argv,
)
from autoextend.lvm.lvmconf import LvmCommandConfig, device_filter_entry, render_config
from autoextend.lvm.names import (
    extents_for,
    mapper_name,
    parse_lvm_device_path,
    parse_mapper_name,
    round_up_to_extent,
)
from autoextend.lvm.shell import interpret_answer, quote_arg, shell_line, split_shell_line
from autoextend.names import is_valid_name, reserved_lv_word
from autoextend.volumes import VolumeRef

NAME_CHARS = string.ascii_letters + string.digits + "+_.-"
names = st.text(NAME_CHARS, min_size=1, max_size=40).filter(is_valid_name)
tags = st.lists(st.text(string.ascii_letters + "_.=:", min_size=1, max_size=8), max_size=4)
sizes = st.integers(min_value=0, max_value=1 << 50)
extent_sizes = st.sampled_from([1 << 20, 4 << 20, 32 << 20, 128 << 20]) | st.integers(1, 1 << 30)


@given(names, names.filter(lambda n: reserved_lv_word(n) is None))
def test_mapper_name_round_trip(vg: str, lv: str) -> None:
    ref = VolumeRef(vg, lv)
    assert parse_mapper_name(mapper_name(ref)) == ref
    assert parse_lvm_device_path(f"/dev/mapper/{mapper_name(ref)}") == ref
    assert parse_lvm_device_path(f"/dev/{vg}/{lv}") == ref


def test_mapper_name_examples() -> None:
    assert mapper_name(VolumeRef("my-vg", "lv-1")) == "my--vg-lv--1"
    assert parse_mapper_name("a---lv") == VolumeRef("a-", "lv")
    assert parse_mapper_name("novolume") is None
    assert parse_mapper_name("vg-lv-cow") is None  # a single '-' left in the LV part
    assert parse_lvm_device_path("/dev/loop0") is None
    assert parse_lvm_device_path("/dev/mapper/control") is None


@given(sizes, extent_sizes)
def test_round_up_to_extent(size: int, extent: int) -> None:
    rounded = round_up_to_extent(size, extent)
    assert rounded % extent == 0
    assert size <= rounded < size + extent
    assert extents_for(size, extent) * extent == rounded


@given(sizes, sizes, extent_sizes)
def test_rounding_is_monotonic(a: int, b: int, extent: int) -> None:
    if a <= b:
        assert round_up_to_extent(a, extent) <= round_up_to_extent(b, extent)


def _lvm_json(kind: str, rows: list[dict[str, str]]) -> str:
    # lvm2's layout: every value a string, one record per line.
    body = ",\n".join("      " + json.dumps(row) for row in rows)
    return f'  {{\n    "report": [\n      {{\n        "{kind}": [\n{body}\n  ]}}]}}\n'


lvs_strategy = st.lists(
    st.builds(
        report.LV,
        vg=names,
        name=names,
        uuid=st.text(string.ascii_letters + "-", max_size=38),
        size=st.integers(0, 1 << 20).map(lambda n: n * (4 << 20)),
        extent_size=st.just(4 << 20),
        tags=tags.map(tuple),
        active=st.sampled_from([True, False, None]),
        attr=st.text(string.ascii_letters + "-", max_size=10),
    ),
    max_size=5,
)


def _lv_row(lv: report.LV) -> dict[str, str]:
    active = {True: "active", False: "", None: "unknown"}[lv.active]
    return {
        "vg_name": lv.vg, "lv_name": lv.name, "lv_uuid": lv.uuid, "lv_size": str(lv.size),
        "vg_extent_size": str(lv.extent_size), "lv_tags": ",".join(lv.tags),
        "lv_active": active, "lv_attr": lv.attr,
    }


@given(lvs_strategy)
def test_lvs_report_round_trip(lvs: list[report.LV]) -> None:
    assert report.parse_lvs(_lvm_json("lv", [_lv_row(lv) for lv in lvs])) == tuple(lvs)


@given(
    st.builds(
        report.VG, name=names, uuid=st.just("u"), size=sizes, free=sizes,
        extent_size=extent_sizes, extent_count=sizes, free_extents=sizes, seqno=sizes,
        pv_count=st.integers(0, 100), lv_count=st.integers(0, 1000), tags=tags.map(tuple),
        mda_size=st.just(1 << 27), mda_free=st.integers(0, 1 << 27), mda_count=st.integers(0, 9),
    )
)
def test_vgs_report_round_trip(vg: report.VG) -> None:
    assert report.parse_vgs(_lvm_json("vg", [_vg_row(vg)])) == (vg,)


def _vg_row(vg: report.VG) -> dict[str, str]:
    return {
        "vg_name": vg.name, "vg_uuid": vg.uuid, "vg_size": str(vg.size), "vg_free": str(vg.free),
        "vg_extent_size": str(vg.extent_size), "vg_extent_count": str(vg.extent_count),
        "vg_free_count": str(vg.free_extents), "vg_seqno": str(vg.seqno),
        "pv_count": str(vg.pv_count), "lv_count": str(vg.lv_count), "vg_tags": ",".join(vg.tags),
        "vg_mda_size": str(vg.mda_size), "vg_mda_free": str(vg.mda_free),
        "vg_mda_count": str(vg.mda_count),
    }


def test_vgs_report_metadata_area_is_strict() -> None:
    vg = report.VG("vg", "u", 8, 4, 4, 2, 1, 3, 1, 0, (), 2093056, 1044480, 1)
    assert report.parse_vgs(_lvm_json("vg", [_vg_row(vg)])) == (vg,)
    for key, value, why in (("vg_mda_free", "2093057", "more metadata area free"),
                            ("vg_mda_size", "-1", "not a non-negative integer"),
                            ("vg_mda_count", "", "not a non-negative integer")):
        row = {**_vg_row(vg), key: value}
        with pytest.raises(ReportFormatError, match=why):
            report.parse_vgs(_lvm_json("vg", [row]))
    row = _vg_row(vg)
    del row["vg_mda_free"]
    with pytest.raises(ReportFormatError, match="lacks vg_mda_free"):
        report.parse_vgs(_lvm_json("vg", [row]))


@given(st.dictionaries(names, st.lists(st.integers(1, 1 << 20), min_size=1, max_size=5),
                       max_size=4))
def test_segment_counts_report(by_vg: dict[str, list[int]]) -> None:
    rows = [{"vg_name": vg, "lv_name": f"lv{i}", "seg_count": str(n)}
            for vg, counts in by_vg.items() for i, n in enumerate(counts)]
    got = report.parse_segment_counts(_lvm_json("lv", rows))
    assert got == {vg: report.SegmentCounts(vg, len(c), sum(c), max(c))
                   for vg, c in by_vg.items()}


def test_segment_counts_report_is_strict() -> None:
    for row, why in (({"vg_name": "vg", "lv_name": "lv", "seg_count": "0"}, "no segment"),
                     ({"vg_name": "vg", "lv_name": "", "seg_count": "1"}, "lv_name is empty"),
                     ({"vg_name": "vg", "lv_name": "lv", "seg_count": "x"}, "non-negative"),
                     ({"vg_name": "vg", "lv_name": "lv"}, "lacks seg_count")):
        with pytest.raises(ReportFormatError, match=why):
            report.parse_segment_counts(_lvm_json("lv", [row]))


def test_pvs_report_with_a_missing_pv() -> None:
    row = {
        "pv_name": "[unknown]", "pv_uuid": "u", "vg_name": "vg", "pv_size": "1048576",
        "pv_free": "0", "pv_pe_count": "1", "pv_pe_alloc_count": "1", "pv_missing": "missing",
        "pv_tags": "",
    }
    (pv,) = report.parse_pvs(_lvm_json("pv", [row]))
    assert pv.missing and pv.size == 1 << 20


@given(st.text(max_size=200))
def test_garbage_reports_are_rejected(text: str) -> None:
    for parse in (report.parse_lvs, report.parse_vgs, report.parse_pvs):
        try:
            result = parse(text)
        except ReportFormatError:
            continue
        assert result == ()  # only an empty report can come out of arbitrary text


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )
)
def test_garbage_json_is_rejected_cleanly(doc: object) -> None:
    for parse in (report.parse_lvs, report.parse_vgs, report.parse_pvs,
                  report.parse_segment_counts):
        try:
            parse(json.dumps(doc))
        except ReportFormatError:
            pass


@pytest.mark.parametrize(
    ("field", "value"),
    [("lv_size", "-1"), ("lv_size", "1.5"), ("lv_size", "12MiB"), ("lv_active", "maybe"),
     ("lv_size", "1")],  # 1 byte is not a whole number of extents
)
def test_bad_values_are_rejected(field: str, value: str) -> None:
    lv = report.LV("vg", "lv", "u", 4 << 20, 4 << 20, (), True, "-wi-a-----")
    row = _lv_row(lv)
    row[field] = value
    with pytest.raises(ReportFormatError):
        report.parse_lvs(_lvm_json("lv", [row]))


def test_report_missing_field_is_rejected() -> None:
    row = _lv_row(report.LV("vg", "lv", "u", 0, 4 << 20, (), None, ""))
    del row["lv_tags"]
    with pytest.raises(ReportFormatError, match="lv_tags"):
        report.parse_lvs(_lvm_json("lv", [row]))


@given(st.lists(st.text(st.characters(blacklist_characters="\n\r\0\"'"), max_size=20) |
                st.text(st.characters(blacklist_characters="\n\r\0'"), max_size=20) |
                st.text(st.characters(blacklist_characters="\n\r\0\""), max_size=20),
                min_size=1, max_size=6))
def test_shell_quoting_round_trip(args: list[str]) -> None:
    assert split_shell_line(shell_line(args)) == args


def test_shell_quoting_refuses_what_cannot_pass() -> None:
    for bad in ("a\nb", "both'\"", "nul\0"):
        with pytest.raises(ValueError):
            quote_arg(bad)
    assert quote_arg("vg/lv") == "vg/lv"
    assert quote_arg('devices { filter=["r|.*|"] }') == "'devices { filter=[\"r|.*|\"] }'"


def test_interpret_answer() -> None:
    ok = {"log": [{"log_type": "status", "log_context": "shell", "log_message": "success",
                   "log_ret_code": "1"}]}
    assert interpret_answer(json.dumps(ok)) == (0, "")
    failed = {"log": [
        {"log_type": "error", "log_context": "processing", "log_message": "Volume group \"x\" "
         "not found", "log_ret_code": "0"},
        {"log_type": "status", "log_context": "shell", "log_message": "failure",
         "log_ret_code": "5"}]}
    assert interpret_answer(json.dumps(failed)) == (5, 'Volume group "x" not found')
    for bad in ("[]", "{}", '{"log": [{"log_type": "status"}]}', '{"log": []}', "nonsense"):
        with pytest.raises(ValueError):
            interpret_answer(bad)


@pytest.mark.parametrize(
    ("stderr", "cls"),
    [
        ('  Volume group "vg9" not found\n  Cannot process volume group vg9', NoSuchVolumeGroup),
        ("  Logical volume nolv not found in volume group engvg.", NoSuchLogicalVolume),
        ('  Failed to find logical volume "vg/lv"', NoSuchLogicalVolume),
        ("  Insufficient free space: 4950 extents needed, but only 460 available",
         InsufficientFreeExtents),
        ("  /run/lock/lvm/V_vg: flock failed: Resource temporarily unavailable\n"
         "  Can't get lock for vg.", LvmLockError),
        ("  WARNING: Couldn't find device with uuid abc.\n"
         "  Cannot change VG vg while PVs are missing.", MissingPvError),
        ("  New size (50 extents) matches existing size (50 extents).", LvmCommandError),
    ],
)
def test_classify_failure(stderr: str, cls: type[Exception]) -> None:
    error = classify_failure(("lvextend", "--config", "x", "vg/lv"), 5, stderr)
    assert type(error) is cls
    assert error.argv == ("lvextend", "--config", "x", "vg/lv")
    assert error.stderr == stderr
    assert error.volume == "vg/lv"


def test_display_argv_elides_config() -> None:
    assert display_argv(["lvs", "--config", "devices {}", "-o", "a,b", "vg"]) == (
        "lvs --config <config> -o <fields> vg"
    )


def test_config_admits_only_the_pool_devices() -> None:
    text = render_config(LvmCommandConfig(("/dev/loop3", "/dev/mapper/36a.b+c")))
    assert 'filter=["a|^/dev/loop3$|","a|^/dev/mapper/36a[.]b[+]c$|","r|.*|"]' in text
    assert "global_filter=" in text and "use_devicesfile=0" in text and 'hints="none"' in text
    assert "activation=0" in text
    assert "\n" not in text
    for bad in ("loop3", "/dev/a|b", "/dev/a b", '/dev/a"', "/dev/"):
        with pytest.raises(ValueError):
            device_filter_entry(bad)
