"""A host's generation at start: one more than any it can find in its own sectors.

Replies match a request only with the same generation, so a restarted host must never reuse
one its previous incarnation used. It reads its ring sector, request box and reply box and
takes one more than the highest generation there (also the generations the SPM copied into
reply slots). When some sector is unreadable, the generation it held may be higher: the new
one jumps by a random amount up to 2**20 past what was seen. Past
``HOST_GENERATION_LIMIT`` (2**32 starts, or a hostile checksum-valid value) it starts again
from 1, skipping every generation a reply slot still carries, so no old reply can match.
The reply sectors' own header holds the SPM's epoch, not a host generation: it is not counted.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Collection

from autoextend.sectors import SectorStorage
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.wire import (
    GENERATION_JUMP_MAX,
    HOST_GENERATION_LIMIT,
    Kind,
    Reply,
    decode_ring,
    decode_sector,
)


def after(
    seen: int, unreadable: bool, jump: int, taken: Collection[int] = frozenset()
) -> int:
    """The generation after ``seen``; ``jump`` (1..2**20) is added when a sector was
    unreadable. Always in 1..HOST_GENERATION_LIMIT and never one of ``taken`` (the
    generations in our reply slots) once it had to start again from 1 (pure)."""
    extra = min(jump, GENERATION_JUMP_MAX) if unreadable else 0
    generation = seen + 1 + extra
    if generation > HOST_GENERATION_LIMIT:
        generation = 1 + extra
        while generation in taken:
            generation += 1
    return generation


async def next_generation(
    storage: SectorStorage, layout: MailboxLayout, host_id: int,
    rng: random.Random | None = None,
) -> int:
    """Read the host's sectors and pick its new generation (``rng``: the random jump's source,
    default the OS's).

    Raises:
        StorageError: a read failed.
    """
    ss = layout.sector_size
    seen = 0
    unreadable = False
    taken: set[int] = set()
    try:
        seen = decode_ring(await storage.read(layout.ring_offset(host_id), ss), host_id).generation
    except CorruptSector:
        unreadable = True
    for kind, offset, first, length in (
        (Kind.REQUEST, layout.request_offset(host_id), 1, layout.request_box_bytes),
        (Kind.REPLY, layout.reply_offset(host_id), 0, layout.reply_box_bytes),
    ):
        box = await storage.read(offset, length)
        for n in range(length // ss):
            index = first + n
            slots = (layout.request_sector_slots(index) if kind is Kind.REQUEST
                     else layout.reply_sector_slots(index))
            try:
                sector = decode_sector(box[n * ss : (n + 1) * ss], kind, index, host_id,
                                       len(slots))
            except CorruptSector:
                unreadable = True
                continue
            replied = [r.generation for r in sector.slots if isinstance(r, Reply)]
            taken.update(replied)
            own = [sector.generation] if kind is Kind.REQUEST else []  # reply: the SPM's epoch
            seen = max([seen, *own, *replied])
    jump = (rng.randrange(GENERATION_JUMP_MAX) if rng is not None
            else secrets.randbelow(GENERATION_JUMP_MAX))
    return after(seen, unreadable, 1 + jump, taken)
