"""Checksum-valid mailbox sectors with extreme field values, for every sector and slot type.

Each is decoded, then written into the mailbox of an absent host (ring sector, request box)
or of a live host (its reply box) beside a valid request; the SPM server and the host
mailbox run over them. Nothing may escape, impossible values are counted and never acted on,
and the valid request is still served.
"""

from __future__ import annotations

import anyio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from autoextend.spm.errors import CorruptSector
from autoextend.spm.generation import after
from autoextend.spm.sealing import seal
from autoextend.spm.validate import check_request
from autoextend.spm.wire import (
    CRC_OFFSET,
    HEADER,
    HOST_GENERATION_LIMIT,
    MAX_SIZE,
    NAME_FIELD,
    REPLY_SLOT,
    REQUEST_SLOT,
    RING_BODY,
    RING_HEADER_SIZE,
    RING_MAGIC,
    SLOT_SIZE,
    TEXT_FIELD,
    VERSION,
    Kind,
    MalformedSlot,
    Reply,
    Request,
    Status,
    decode_reply,
    decode_request,
    decode_ring,
    decode_sector,
    encode_sector,
)
from autoextend.volumes import VolumeRef
from tests.hypo import examples

from .fakes import FAST
from .pool import VG, MiB, Pool, serving, vol

U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1
LIMIT = FAST.max_request_bytes
ABSENT = 3


def extremes(*limits: int, top: int) -> st.SearchStrategy[int]:
    values = {0, 1, top - 1, top}
    for limit in limits:
        values |= {limit - 1, limit, limit + 1}
    return st.sampled_from(sorted(v for v in values if 0 <= v <= top))


generation = extremes(HOST_GENERATION_LIMIT, top=U32)
good_generation = st.sampled_from([1, 5, HOST_GENERATION_LIMIT - 1, HOST_GENERATION_LIMIT])
names = st.sampled_from([b"vg0/lv1", b"vg0/lv99", b"vgX/lv1", b"vg0", b"vg0/lv\x001",
                         b"vg0/l\xffv", b"vg0/a/b", b"/", b"vg0/" + b"l" * 100,
                         b"vg0/lv1_tmeta", b"vg0/snapshot1"])


@st.composite
def request_slots(draw: st.DrawFn) -> bytes:
    name = draw(names)
    if draw(st.booleans()):  # well formed, extreme id and size
        return REQUEST_SLOT.pack(draw(extremes(top=U32)), 0, min(len(name), NAME_FIELD), 0,
                                 draw(extremes(LIMIT, 100 * MiB, top=U64)), name[:NAME_FIELD])
    name_len = draw(st.sampled_from([len(name), 0, 1, NAME_FIELD, NAME_FIELD + 1, U8]))
    return REQUEST_SLOT.pack(
        draw(extremes(top=U32)), draw(st.sampled_from([0, 1, U16])), name_len,
        draw(st.sampled_from([0, 1, U8])),
        draw(extremes(LIMIT, 100 * MiB, top=U64)), name[:NAME_FIELD],
    )


@st.composite
def reply_slots(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from([b"", b"ok", "é".encode() * 50, b"\xff\xfe", b"a\0b"]))
    return REPLY_SLOT.pack(
        draw(extremes(top=U32)), draw(generation), draw(extremes(MAX_SIZE, top=U64)),
        draw(extremes(3, top=U8)), draw(extremes(9, top=U8)),
        draw(st.sampled_from([len(text), 0, TEXT_FIELD, TEXT_FIELD + 1, U8])),
        draw(st.sampled_from([0, 0, 1])), text,
    )


def sealed(buf: bytearray) -> bytes:
    seal(buf, CRC_OFFSET)
    return bytes(buf)


@st.composite
def ring_sectors(draw: st.DrawFn) -> bytes:
    buf = bytearray(512)
    if draw(st.booleans()):  # a well-formed header: the slots are what is hostile
        HEADER.pack_into(buf, 0, RING_MAGIC, VERSION, 0, ABSENT, draw(good_generation), 0)
        RING_BODY.pack_into(buf, 16, draw(extremes(top=U64)), draw(extremes(top=U32)), 0)
    else:
        HEADER.pack_into(buf, 0, RING_MAGIC, VERSION, draw(st.sampled_from([0, 1])),
                         draw(st.sampled_from([ABSENT, 0, U16])), draw(generation), 0)
        RING_BODY.pack_into(buf, 16, draw(extremes(top=U64)), draw(extremes(top=U32)),
                            draw(st.sampled_from([0, 1])))
    for i in range(4):
        buf[RING_HEADER_SIZE + i * SLOT_SIZE : RING_HEADER_SIZE + (i + 1) * SLOT_SIZE] = (
            draw(request_slots()))
    return sealed(buf)


@st.composite
def box_sectors(draw: st.DrawFn, kind: Kind, host: int, index: int) -> bytes:
    buf = bytearray(512)
    if draw(st.booleans()):
        gen = draw(good_generation if kind is Kind.REQUEST else extremes(top=U32))
        HEADER.pack_into(buf, 0, kind.value, VERSION, index, host, gen, 0)
    else:
        HEADER.pack_into(buf, 0, kind.value, VERSION, draw(st.sampled_from([index, index + 1])),
                         draw(st.sampled_from([host, 0])),
                         draw(generation if kind is Kind.REQUEST else extremes(top=U32)), 0)
    slot = request_slots() if kind is Kind.REQUEST else reply_slots()
    for i in range(4):
        buf[16 + i * SLOT_SIZE : 16 + (i + 1) * SLOT_SIZE] = draw(slot)
    return sealed(buf)


def acceptable(item: Request | MalformedSlot | None) -> bool:
    return isinstance(item, Request) and check_request(item, [VG], LIMIT) is None


@given(request_slots())
def test_request_slot_decodes_or_is_malformed(raw: bytes) -> None:
    item = decode_request(raw)
    if isinstance(item, Request):
        assert 0 < item.request_id <= U32 and 0 <= item.size <= MAX_SIZE
        assert "\0" not in item.vg + item.lv or not acceptable(item)


@given(reply_slots())
def test_reply_slot_decodes_or_is_malformed(raw: bytes) -> None:
    item = decode_reply(raw)
    if isinstance(item, Reply):
        assert 1 <= item.generation <= HOST_GENERATION_LIMIT
        assert isinstance(item.status, Status) and len(item.text.encode()) <= TEXT_FIELD


@given(ring_sectors())
def test_ring_sector_decodes_or_is_corrupt(raw: bytes) -> None:
    try:
        ring = decode_ring(raw, ABSENT)
    except CorruptSector:
        return
    assert 1 <= ring.generation <= HOST_GENERATION_LIMIT and ring.host_id == ABSENT
    assert after(ring.generation, True, 1 << 20) <= HOST_GENERATION_LIMIT


# ---- the SPM server and the host mailbox over them ----------------------------------------


async def serve_beside(ring: bytes, box: bytes, reply: bytes) -> dict[str, object]:
    """Host 3 is absent and its ring sector and first box sector are hostile; host 1's first
    reply sector is hostile. Host 1 asks for a valid extend."""
    pool = Pool()
    layout = pool.layout
    await pool.storage.write(layout.ring_offset(ABSENT), ring)
    await pool.storage.write(layout.request_offset(ABSENT), box)
    await pool.storage.write(layout.reply_offset(1), reply)
    with anyio.fail_after(10):
        async with serving(pool, 1) as (server, (host,)):
            answer = await host.request(vol(7), 300 * MiB)
    return {"answer": answer, "calls": list(pool.backend.calls),
            "corrupt": server.counters.corrupt_sectors, "received": server.counters.received}


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ring_sectors(), box_sectors(Kind.REQUEST, ABSENT, 1), box_sectors(Kind.REPLY, 1, 0))
def test_hostile_sectors_never_stop_serving(ring: bytes, box: bytes, reply: bytes) -> None:
    result = anyio.run(serve_beside, ring, box, reply)
    answer = result["answer"]
    assert isinstance(answer, Reply) and answer.status is Status.OK
    # Only what decodes to an acceptable request of host 3 may be acted on, besides ours.
    allowed = {vol(7)}
    corrupt = 0
    for raw in (ring, box):
        try:
            items = (decode_ring(raw, ABSENT).slots if raw is ring else
                     decode_sector(raw, Kind.REQUEST, 1, ABSENT, 4).slots)
        except CorruptSector:
            corrupt += 1
            event("corrupt sector")
            continue
        for item in items:
            if isinstance(item, Request) and acceptable(item):
                allowed.add(VolumeRef(item.vg, item.lv))
    calls = result["calls"]
    assert isinstance(calls, list)
    assert {volume for volume, _, _ in calls} <= allowed
    event(f"served {len(calls)} extends, {len(allowed) - 1} acceptable hostile requests")
    assert isinstance(result["corrupt"], int) and result["corrupt"] >= corrupt


async def test_host_at_the_generation_limit_starts_again_past_its_replies() -> None:
    """Host 1's own ring sector carries the last usable generation and its reply box a reply
    of generation 1 for the request id it will use first: the new generation starts again
    from 1 but skips 1, so that stale reply cannot answer the new request."""
    pool = Pool()
    layout = pool.layout
    buf = bytearray(512)
    HEADER.pack_into(buf, 0, RING_MAGIC, VERSION, 0, 1, HOST_GENERATION_LIMIT, 0)
    RING_BODY.pack_into(buf, 16, 9, 0, 0)
    await pool.storage.write(layout.ring_offset(1), sealed(buf))
    stale = Reply(1, 1, Status.FAILED, 0, text="stale")
    await pool.storage.write(layout.reply_offset(1), encode_sector(Kind.REPLY, 512, 0, 1, 0,
                                                                   [stale]))
    with anyio.fail_after(10):
        async with serving(pool, 1) as (_, (host,)):
            assert host.generation == 2
            answer = await host.request(vol(7), 300 * MiB)
    assert answer.status is Status.OK and answer.generation == 2
