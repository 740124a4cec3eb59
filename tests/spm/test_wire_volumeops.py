"""The wire of CREATE, REMOVE and GROW-PV (issue 27 item 2), and vdsm's initial size rule.

Rolling upgrade: a decoder refuses an op it does not know before it looks at anything else
(``wire.decode_request``: "unknown op N"; the same check in every release since op 1), and
the SPM answers such a slot MALFORMED and never acts on it. So an SPM of an earlier release
refuses a create, remove or grow cleanly; the op a release after this one adds is refused
here the same way (what this file checks, with op 6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.spm import volumeops
from autoextend.spm.hostpolicy import local_rejection
from autoextend.spm.validate import check_request
from autoextend.spm.wire import (
    CREATE_NAME_FIELD,
    MAX_SIZE,
    OP_CREATE,
    OP_GROW_PV,
    OP_REMOVE,
    REQUEST_SLOT,
    MalformedSlot,
    ReasonCode,
    Request,
    decode_request,
    encode_request,
)
from autoextend.volumes import VolumeRef


def test_an_op_this_release_does_not_know_is_refused_before_anything_else() -> None:
    raw = REQUEST_SLOT.pack(7, 0, 7, 6, 1 << 30, b"vg/lv00".ljust(104, b"\xff"))
    found = decode_request(raw)
    assert found == MalformedSlot(7, "unknown op 6")


def test_the_create_slot_layout() -> None:
    req = Request(9, "vg", "disk", 5 << 20, OP_CREATE, 20 << 30)
    raw = encode_request(req)
    assert raw[16 + CREATE_NAME_FIELD:] == (20 << 30).to_bytes(8, "little")
    assert raw[7] == OP_CREATE and decode_request(raw) == req


def test_what_cannot_be_sent_or_decoded() -> None:
    with pytest.raises(ValueError):  # a create without a virtual size
        encode_request(Request(1, "vg", "lv", 1, OP_CREATE))
    with pytest.raises(ValueError):  # only a create carries one
        encode_request(Request(1, "vg", "lv", 1, OP_REMOVE, 5))
    with pytest.raises(ValueError):  # a create's name is at most 96 bytes
        encode_request(Request(1, "v" * 40, "l" * 60, 1, OP_CREATE, 5))
    zero_vsize = REQUEST_SLOT.pack(3, 0, 5, OP_CREATE, 1, b"vg/lv")
    assert isinstance(decode_request(zero_vsize), MalformedSlot)
    grow_with_lv = REQUEST_SLOT.pack(3, 0, 5, OP_GROW_PV, 1, b"vg/lv")
    assert isinstance(decode_request(grow_with_lv), MalformedSlot)
    # A remove with bytes after its name: malformed, as for every op but create.
    junk = REQUEST_SLOT.pack(3, 0, 5, OP_REMOVE, 1, b"vg/lv".ljust(104, b"\0")[:103] + b"x")
    assert isinstance(decode_request(junk), MalformedSlot)


def test_a_snapshot_create_carries_its_parent() -> None:
    req = Request(9, "vg", "snap1", 5 << 20, OP_CREATE, 20 << 30, "base")
    raw = encode_request(req)
    assert raw[16:16 + raw[6]] == b"vg/snap1/base" and decode_request(raw) == req
    assert check_request(req, {"vg"}, 1 << 40) is None
    bad = check_request(Request(9, "vg", "snap1", 1, OP_CREATE, 1, "_mlog"), {"vg"}, 1 << 40)
    assert bad is not None and bad.reason is ReasonCode.BAD_NAME
    with pytest.raises(ValueError):  # only a create names a parent
        encode_request(Request(1, "vg", "lv", 1, OP_REMOVE, 0, "base"))
    with pytest.raises(ValueError):  # the parent counts in the create's 96 bytes
        encode_request(Request(1, "vg", "l" * 40, 1, OP_CREATE, 5, "p" * 60))
    for name in (b"vg/snap1/", b"vg//base"):
        half = REQUEST_SLOT.pack(3, 0, len(name), OP_CREATE, 1,
                                 name.ljust(CREATE_NAME_FIELD, b"\0") + (5).to_bytes(8, "little"))
        assert isinstance(decode_request(half), MalformedSlot)


def test_a_parent_that_cannot_be_sent_is_refused_on_the_host() -> None:
    vol = VolumeRef("vg", "snap1")
    assert local_rejection(vol, 1, OP_CREATE, "base") is None
    for op, parent in ((OP_CREATE, "p" * 90), (OP_REMOVE, "base"), (OP_CREATE, "a/b")):
        found = local_rejection(vol, 1, op, parent)
        assert found is not None and found.reason is ReasonCode.BAD_NAME


def test_a_grow_names_a_vg_only_and_passes_validation() -> None:
    req = decode_request(encode_request(Request(4, "pool", "", 1, OP_GROW_PV)))
    assert isinstance(req, Request) and req.lv == ""
    assert check_request(req, {"pool"}, 1 << 40) is None
    bad = check_request(Request(4, "pool", "", 1, OP_REMOVE), {"pool"}, 1 << 40)
    assert bad is not None and bad.reason is ReasonCode.BAD_NAME


MiB = 1 << 20


@given(st.integers(1, 1 << 50), st.integers(1, 1 << 50), st.integers(MiB, 1 << 40))
def test_initial_size_rule(capacity: int, initial: int, chunk: int) -> None:
    if initial > capacity:
        with pytest.raises(volumeops.CreateRefused):
            volumeops.initial_size(capacity, initial, chunk)
        return
    size = volumeops.initial_size(capacity, initial, chunk)
    assert size % 512 == 0
    assert initial * 11 <= size * 10 < initial * 11 + 10 * 512  # + 10 %, one sector at most
    default = volumeops.initial_size(capacity, None, chunk)
    assert default <= chunk and (default == chunk or default * 10 >= capacity * 11)


def test_initial_size_refuses_nonsense() -> None:
    for capacity, initial in ((0, None), (10, 0), (10, -1)):
        with pytest.raises(volumeops.CreateRefused):
            volumeops.initial_size(capacity, initial, MiB)
    assert volumeops.initial_size(MAX_SIZE // 2, None, 2560 * MiB) == 2560 * MiB
    assert volumeops.initial_size(100 * MiB, None, 2560 * MiB) == 110 * MiB
