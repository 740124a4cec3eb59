"""A host's generation at start: one more than any it can find in its own sectors.

Replies match a request only with the same generation, so a restarted host must never reuse
one its previous incarnation used. It reads its ring sector, request box and reply box and
takes one more than the highest generation there (also the generations the SPM copied into
reply slots). When some sector is unreadable, the generation it held may be higher: the new
one jumps by a random amount up to 2**20 past what was seen.
"""

from __future__ import annotations

import random
import secrets

from autoextend.directio import SectorStorage
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.wire import MAX_GENERATION, Kind, Reply, decode_ring, decode_sector


def after(seen: int, unreadable: bool, jump: int) -> int:
    """The generation after ``seen``; ``jump`` (>= 1) is added when a sector was unreadable;
    never 0 (pure)."""
    generation = seen + 1 + (jump if unreadable else 0)
    return generation & MAX_GENERATION or 1


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
            seen = max([seen, sector.generation]
                       + [r.generation for r in sector.slots if isinstance(r, Reply)])
    jump = rng.randrange(1 << 20) if rng is not None else secrets.randbelow(1 << 20)
    return after(seen, unreadable, 1 + jump)
