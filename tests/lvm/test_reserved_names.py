"""lvm2's reserved LV names: the SPM never acts on them, and our list is lvm2's.

The real-lvm2 test asks lvm2 2.03 itself (lvcreate on loop-device PVs) which names it refuses,
and checks that autoextend refuses exactly those among a set of candidates that includes the
reserved words, their look-alikes, and names lvm2 gives its internal volumes.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.lvm.errors import LvmError
from autoextend.lvm.names import parse_lvm_device_path
from autoextend.names import (
    RESERVED_LV_PARTS,
    RESERVED_LV_PREFIXES,
    is_valid_name,
    lv_name_problem,
    reserved_lv_word,
)
from autoextend.spm.validate import check_request
from autoextend.spm.wire import ReasonCode, Request
from autoextend.volumes import VolumeRef

from .support import MiB, Pool

CHARS = string.ascii_letters + string.digits + "+_."
plain = st.text(CHARS, min_size=1, max_size=30).filter(
    lambda n: is_valid_name(n) and reserved_lv_word(n) is None
)

# The reserved words, lvm2's own internal names, and near misses that lvm2 accepts.
CANDIDATES = sorted({
    *(f"{p}x" for p in RESERVED_LV_PREFIXES),
    *(f"d{part}" for part in RESERVED_LV_PARTS),
    *(f"d{part}_0" for part in RESERVED_LV_PARTS),
    "d_rimage_1", "d_mimagetmp_2", "pool_tdata", "pool_tmeta", "lvol0_pmspare", "c_cpool_cdata",
    # near misses: allowed by lvm2, so autoextend must manage them
    "xpvmove", "xsnapshot", "d_vdo", "d_vpool", "d_cvo", "dcvol", "d_tmet", "d-tmeta",
    "d_imet", "d_rimag", "vm1_disk0", "snap", "pvmov",
})


def _request(lv: str) -> Request:
    return Request(request_id=1, vg="vg0", lv=lv, size=1 << 30)


@pytest.mark.parametrize("word", [*RESERVED_LV_PREFIXES, *RESERVED_LV_PARTS])
def test_each_reserved_word_is_refused(word: str) -> None:
    name = f"{word}1" if word in RESERVED_LV_PREFIXES else f"vm{word}1"
    assert reserved_lv_word(name) == word
    assert "reserved for lvm2 internal volumes" in (lv_name_problem(name) or "")
    assert parse_lvm_device_path(f"/dev/vg0/{name}") is None
    assert parse_lvm_device_path(f"/dev/mapper/vg0-{name}") is None


@given(plain, st.sampled_from(RESERVED_LV_PARTS), plain)
def test_a_reserved_part_anywhere_is_refused(head: str, part: str, tail: str) -> None:
    name = (head + part + tail)[:127]
    if part in name:
        assert lv_name_problem(name) is not None


@given(plain)
def test_plain_names_are_ours(name: str) -> None:
    assert lv_name_problem(name) is None
    assert parse_lvm_device_path(f"/dev/vg0/{name}") == VolumeRef("vg0", name)


def test_spm_rejects_reserved_names() -> None:
    for word in (*RESERVED_LV_PREFIXES, *RESERVED_LV_PARTS):
        name = f"{word}7" if word in RESERVED_LV_PREFIXES else f"vm{word}"
        rejection = check_request(_request(name), {"vg0"}, 1 << 40)
        assert rejection is not None and rejection.reason is ReasonCode.BAD_NAME, name
    assert check_request(_request("vm1_disk0"), {"vg0"}, 1 << 40) is None


@pytest.mark.slow
async def test_our_list_is_lvm2s(pool: Pool) -> None:
    """lvcreate refuses a name exactly when autoextend calls it reserved."""
    refused_by_lvm2: set[str] = set()
    for name in CANDIDATES:
        try:
            await pool.writer.create_lv(VolumeRef(pool.vg, name), 4 * MiB)
        except LvmError as exc:
            assert "reserved" in str(exc), exc  # refused for its name, not something else
            refused_by_lvm2.add(name)
    ours = {name for name in CANDIDATES if reserved_lv_word(name) is not None}
    assert refused_by_lvm2 == ours
