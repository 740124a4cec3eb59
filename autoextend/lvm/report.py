"""Typed lvm2 reports: the fields asked for, and strict parsers of lvm2's JSON output (pure).

Commands ask for exactly the ``*_FIELDS`` below with ``--reportformat json --units b
--nosuffix``; lvm2 prints every value as a string. The parsers accept only that shape:
any missing field, non-numeric size or unexpected structure raises
:class:`~autoextend.lvm.errors.ReportFormatError`, so garbage is never acted on. Numbers must
lie in ``0 <= x < 2**63``, names must be non-empty and free of NUL bytes and the JSON must nest
no deeper than a report does. A ``log``
section (present with ``log/report_command_log=1``, as in ``lvm shell`` sessions) is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autoextend import boundedjson
from autoextend.lvm.errors import ReportFormatError
from autoextend.volumes import VolumeRef

PV_FIELDS = (
    "pv_name", "pv_uuid", "vg_name", "pv_size", "pv_free", "pv_pe_count",
    "pv_pe_alloc_count", "pv_missing", "pv_tags",
)
VG_FIELDS = (
    "vg_name", "vg_uuid", "vg_size", "vg_free", "vg_extent_size", "vg_extent_count",
    "vg_free_count", "vg_seqno", "pv_count", "lv_count", "vg_tags", "vg_mda_size",
    "vg_mda_free", "vg_mda_count",
)
LV_FIELDS = (
    "vg_name", "lv_name", "lv_uuid", "lv_size", "vg_extent_size", "lv_tags", "lv_active",
    "lv_attr",
)


@dataclass(frozen=True)
class PV:
    name: str
    uuid: str
    vg: str
    size: int
    free: int
    extent_count: int
    allocated_extents: int
    missing: bool
    tags: tuple[str, ...]


@dataclass(frozen=True)
class VG:
    name: str
    uuid: str
    size: int
    free: int
    extent_size: int
    extent_count: int
    free_extents: int
    seqno: int
    pv_count: int
    lv_count: int
    tags: tuple[str, ...]
    # The VG's metadata areas (lvm2's text metadata, a circular buffer on each PV that has
    # one): the smallest area's size, and the least free space of any (bytes). lvm2 keeps
    # room for the old and the new copy, so ``mda_free`` is at most about half of
    # ``mda_size`` and reaching 0 means the next change that grows the metadata fails.
    mda_size: int = 0
    mda_free: int = 0
    mda_count: int = 0


@dataclass(frozen=True)
class LV:
    """``active`` is None when lvm2 cannot tell (activation disabled, no device-mapper)."""

    vg: str
    name: str
    uuid: str
    size: int
    extent_size: int
    tags: tuple[str, ...]
    active: bool | None
    attr: str

    @property
    def ref(self) -> VolumeRef:
        return VolumeRef(self.vg, self.name)

    @property
    def extent_count(self) -> int:
        return self.size // self.extent_size


MAX_NUMBER = (1 << 63) - 1
MAX_DEPTH = 8  # {"report": [{"lv": [{...}]}]} is 4 deep


def _int(row: dict[str, str], key: str) -> int:
    value = row[key]
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        raise ReportFormatError(f"{key}={value[:32]!r} is not a non-negative integer")
    number = int(value)
    if number > MAX_NUMBER:
        raise ReportFormatError(f"{key}={value} is beyond 2**63-1")
    return number


def _tags(value: str) -> tuple[str, ...]:
    # lvm2 tags cannot contain commas, so the comma-joined list splits back exactly.
    return tuple(tag for tag in value.split(",") if tag)


def _active(value: str) -> bool | None:
    if value == "active":
        return True
    if value == "":
        return False
    if value == "unknown":
        return None
    raise ReportFormatError(f"lv_active={value!r} is not a known state")


def _rows(text: str, kind: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    try:
        doc: Any = boundedjson.loads(text, MAX_DEPTH)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, TooDeep, huge numbers
        raise ReportFormatError(f"not JSON: {str(err)[:200]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("report"), list):
        raise ReportFormatError("no 'report' list at the top level")
    rows: list[dict[str, str]] = []
    for section in doc["report"]:
        if not isinstance(section, dict) or set(section) != {kind}:
            raise ReportFormatError(f"report section is not a '{kind}' list")
        records = section[kind]
        if not isinstance(records, list):
            raise ReportFormatError(f"'{kind}' is not a list")
        for record in records:
            if not isinstance(record, dict):
                raise ReportFormatError(f"a '{kind}' record is not an object")
            missing = [field for field in fields if field not in record]
            if missing:
                raise ReportFormatError(f"a '{kind}' record lacks {', '.join(missing)}")
            if not all(isinstance(record[field], str) for field in fields):
                raise ReportFormatError(f"a '{kind}' record has a non-string value")
            rows.append({field: record[field] for field in fields})
    return rows


def _name(row: dict[str, str], key: str) -> str:
    value = row[key]
    if not value:
        raise ReportFormatError(f"{key} is empty")
    if "\x00" in value or len(value) > 4096:
        raise ReportFormatError(f"{key} has a NUL byte or is too long")
    return value


def parse_pvs(text: str) -> tuple[PV, ...]:
    """PVs from ``pvs -o <PV_FIELDS> --reportformat json --units b --nosuffix``."""
    return tuple(
        PV(
            name=_name(row, "pv_name"),
            uuid=row["pv_uuid"],
            vg=row["vg_name"],
            size=_int(row, "pv_size"),
            free=_int(row, "pv_free"),
            extent_count=_int(row, "pv_pe_count"),
            allocated_extents=_int(row, "pv_pe_alloc_count"),
            missing=row["pv_missing"] == "missing",
            tags=_tags(row["pv_tags"]),
        )
        for row in _rows(text, "pv", PV_FIELDS)
    )


def parse_vgs(text: str) -> tuple[VG, ...]:
    """VGs from ``vgs -o <VG_FIELDS> --reportformat json --units b --nosuffix``."""
    vgs: list[VG] = []
    for row in _rows(text, "vg", VG_FIELDS):
        vg = VG(
            name=_name(row, "vg_name"),
            uuid=row["vg_uuid"],
            size=_int(row, "vg_size"),
            free=_int(row, "vg_free"),
            extent_size=_int(row, "vg_extent_size"),
            extent_count=_int(row, "vg_extent_count"),
            free_extents=_int(row, "vg_free_count"),
            seqno=_int(row, "vg_seqno"),
            pv_count=_int(row, "pv_count"),
            lv_count=_int(row, "lv_count"),
            tags=_tags(row["vg_tags"]),
            mda_size=_int(row, "vg_mda_size"),
            mda_free=_int(row, "vg_mda_free"),
            mda_count=_int(row, "vg_mda_count"),
        )
        if vg.extent_size == 0:
            raise ReportFormatError(f"VG {vg.name} has extent size 0")
        if vg.mda_free > vg.mda_size:
            raise ReportFormatError(f"VG {vg.name} has more metadata area free than its size")
        vgs.append(vg)
    return tuple(vgs)


def parse_lvs(text: str) -> tuple[LV, ...]:
    """LVs from ``lvs -o <LV_FIELDS> --reportformat json --units b --nosuffix``."""
    lvs: list[LV] = []
    for row in _rows(text, "lv", LV_FIELDS):
        lv = LV(
            vg=_name(row, "vg_name"),
            name=_name(row, "lv_name"),
            uuid=row["lv_uuid"],
            size=_int(row, "lv_size"),
            extent_size=_int(row, "vg_extent_size"),
            tags=_tags(row["lv_tags"]),
            active=_active(row["lv_active"]),
            attr=row["lv_attr"],
        )
        if lv.extent_size == 0 or lv.size % lv.extent_size:
            raise ReportFormatError(
                f"LV {lv.vg}/{lv.name} size {lv.size} is not a whole number of "
                f"{lv.extent_size}-byte extents"
            )
        lvs.append(lv)
    return tuple(lvs)


PVSEG_FIELDS = ("pv_name", "pe_start", "pvseg_start", "pvseg_size", "vg_name", "lv_name",
                "vg_extent_size")


@dataclass(frozen=True)
class PvSegment:
    """A run of physical extents on one PV: free (``lv`` empty) or one LV's."""

    pv: str
    pe_start: int      # byte offset of extent 0 on the PV device
    start: int         # first extent of the run
    count: int         # extents in the run
    vg: str
    lv: str            # "" for free extents
    extent_size: int


def parse_pvsegs(text: str) -> tuple[PvSegment, ...]:
    """PV segments from ``pvs --segments -o <PVSEG_FIELDS> --reportformat json --units b
    --nosuffix``. Each run must be non-empty, and the extent size non-zero."""
    segs: list[PvSegment] = []
    for row in _rows(text, "pvseg", PVSEG_FIELDS):
        seg = PvSegment(
            pv=_name(row, "pv_name"),
            pe_start=_int(row, "pe_start"),
            start=_int(row, "pvseg_start"),
            count=_int(row, "pvseg_size"),
            vg=row["vg_name"],
            lv=row["lv_name"],
            extent_size=_int(row, "vg_extent_size"),
        )
        if seg.count == 0 or seg.extent_size == 0:
            raise ReportFormatError(f"PV {seg.pv} segment at {seg.start} is empty")
        if "\x00" in seg.lv or len(seg.lv) > 4096:
            raise ReportFormatError("lv_name has a NUL byte or is too long")
        segs.append(seg)
    return tuple(segs)


LVSEG_COUNT_FIELDS = ("vg_name", "lv_name", "seg_count")


@dataclass(frozen=True)
class SegmentCounts:
    """One VG's LV segments (``lvs -o seg_count``): every extend that cannot continue an
    LV's last run adds one, and each costs about 110 bytes of lvm2's text metadata."""

    vg: str
    lvs: int
    total: int
    max: int


def parse_segment_counts(text: str) -> dict[str, SegmentCounts]:
    """Per VG, from ``lvs -o <LVSEG_COUNT_FIELDS> --reportformat json``: the LVs, their
    segments in all and the most any one LV has. Every LV has at least one segment."""
    counts: dict[str, list[int]] = {}
    for row in _rows(text, "lv", LVSEG_COUNT_FIELDS):
        vg = _name(row, "vg_name")
        _name(row, "lv_name")
        segs = _int(row, "seg_count")
        if segs == 0:
            raise ReportFormatError(f"LV {vg}/{row['lv_name']} has no segment")
        counts.setdefault(vg, []).append(segs)
    return {vg: SegmentCounts(vg, len(c), sum(c), max(c)) for vg, c in counts.items()}


LOOK_FIELDS = ("vg_name", "lv_name", "lv_size", "vg_seqno")


def parse_vg_look(text: str, vg: str) -> tuple[int | None, dict[str, int]]:
    """(vg_seqno, {lv: size}) of ``vg`` from ``lvs -o <LOOK_FIELDS> VG``; the seqno is None
    when the VG has no LV (no row carries it). Every row must agree on the seqno."""
    seqnos: set[int] = set()
    sizes: dict[str, int] = {}
    for row in _rows(text, "lv", LOOK_FIELDS):
        if _name(row, "vg_name") != vg:
            raise ReportFormatError(f"an LV of VG {row['vg_name']!r} in the report of {vg!r}")
        seqnos.add(_int(row, "vg_seqno"))
        sizes[_name(row, "lv_name")] = _int(row, "lv_size")
    if len(seqnos) > 1:
        raise ReportFormatError(f"VG {vg}: rows disagree on vg_seqno ({sorted(seqnos)})")
    return (seqnos.pop() if seqnos else None), sizes


PV_GROWTH_FIELDS = ("pv_name", "dev_size", "pe_start", "pv_pe_count", "vg_extent_size",
                    "pv_uuid")


@dataclass(frozen=True)
class PvGrowth:
    """A PV and its device: ``room`` is how many extents the device holds past
    ``pe_start`` (more than ``extent_count``: the LUN grew and ``pvresize`` would use it)."""

    name: str
    device_size: int
    pe_start: int
    extent_count: int
    extent_size: int
    uuid: str = ""

    @property
    def room(self) -> int:
        if self.extent_size <= 0 or self.device_size <= self.pe_start:
            return 0
        return (self.device_size - self.pe_start) // self.extent_size


def parse_pv_growth(text: str) -> tuple[PvGrowth, ...]:
    """From ``pvs -o <PV_GROWTH_FIELDS> --reportformat json --units b --nosuffix``."""
    return tuple(
        PvGrowth(_name(row, "pv_name"), _int(row, "dev_size"), _int(row, "pe_start"),
                 _int(row, "pv_pe_count"), _int(row, "vg_extent_size"), str(row["pv_uuid"]))
        for row in _rows(text, "pv", PV_GROWTH_FIELDS)
    )
