"""The host's request slots: what each holds, and which sectors must be written.

Every slot is in one :class:`SlotState`; :class:`SlotTable` makes every transition, in
memory only (``HostMailbox`` writes what it marks dirty)::

    FREE ──send──▶ SENT ──answer──▶ ANSWERED ──clear (with the next write)──▶ FREE
                    │  ▲                │
                    │  └─send (a new id)┘ (reused at once: answered is free for a request)
                    └──withdraw──▶ FREE (written at once)

An answered slot is free for a new request at once: the SPM already answered it, so seeing
it again changes nothing, and a stale reply can never match a new request (ids do not repeat
within a generation). On disk it is cleared with the host's next write, or ``CLEAR_DELAY_S``
after the first answered slot, which saves a write on the reply's path.
"""

from __future__ import annotations

import enum

from autoextend.spm.layout import SLOTS_PER_HOST, MailboxLayout
from autoextend.spm.wire import Request

CLEAR_DELAY_S = 1.0  # an answered slot is cleared on disk with the next write, or after this


class SlotState(enum.Enum):
    FREE = "free"  # empty (on disk, or its clearing is marked to be written)
    SENT = "sent"  # holds a request waiting for its reply
    ANSWERED = "answered"  # reply taken; free for a request; not yet cleared on disk


class SlotTable:
    """The host's slots, and the request sectors to write (0 is the ring sector)."""

    def __init__(self, layout: MailboxLayout) -> None:
        self._layout = layout
        self._state = [SlotState.FREE] * SLOTS_PER_HOST
        self._requests: list[Request | None] = [None] * SLOTS_PER_HOST
        self.dirty: set[int] = set()
        self.ring_needed = False
        self._answered_since = 0.0

    def state(self, slot: int) -> SlotState:
        return self._state[slot]

    def reset(self) -> None:
        """Everything free and every sector to write (a new generation's empty box)."""
        self._state = [SlotState.FREE] * SLOTS_PER_HOST
        self._requests = [None] * SLOTS_PER_HOST
        self.dirty = set(range(self._layout.request_sectors))
        self.ring_needed = True

    def free(self) -> list[int]:
        """Slots a new request may take, lowest first (the ring sector's head slots first)."""
        return [i for i, s in enumerate(self._state) if s is not SlotState.SENT]

    def send(self, slot: int, request: Request) -> None:
        """FREE, ANSWERED or SENT (a new id) -> SENT: written, then rung."""
        self._set(slot, SlotState.SENT, request)
        self.ring_needed = True

    def withdraw(self, slot: int) -> None:
        """SENT -> FREE, written at once (no ring: the SPM may still answer; ignored)."""
        self._set(slot, SlotState.FREE, None)

    def answer(self, slot: int, now: float) -> None:
        """SENT -> ANSWERED: cleared on disk lazily (:meth:`clear_answered`)."""
        if SlotState.ANSWERED not in self._state:
            self._answered_since = now
        self._state[slot] = SlotState.ANSWERED
        self._requests[slot] = None

    def _set(self, slot: int, state: SlotState, request: Request | None) -> None:
        self._state[slot] = state
        self._requests[slot] = request
        self.dirty.add(self._layout.request_slot_sector(slot))

    def clear_wait(self, now: float) -> float | None:
        """Seconds until answered slots are due to be cleared on disk (None: none)."""
        if SlotState.ANSWERED not in self._state:
            return None
        return max(0.0, self._answered_since + CLEAR_DELAY_S - now)

    def clear_answered(self, now: float) -> None:
        """ANSWERED -> FREE, their sectors marked to write, when some sector is written
        anyway or ``CLEAR_DELAY_S`` passed."""
        answered = [i for i, s in enumerate(self._state) if s is SlotState.ANSWERED]
        # (The same sum as in clear_wait: a difference could round below it and spin.)
        if answered and (self.dirty or now >= self._answered_since + CLEAR_DELAY_S):
            for slot in answered:
                self._set(slot, SlotState.FREE, None)

    def image(self, sector: int) -> list[Request | None]:
        """The slots of one request sector, as they are to be written."""
        return [self._requests[j] for j in self._layout.request_sector_slots(sector)]

    def take_dirty(self) -> tuple[set[int], bool]:
        """The sectors to write and whether to ring, now handed to a flush."""
        dirty, ring = self.dirty, self.ring_needed
        self.dirty, self.ring_needed = set(), False
        return dirty, ring

    def put_back(self, dirty: set[int], ring: bool) -> None:
        """A flush failed: what it took is to be written again."""
        self.dirty |= dirty
        self.ring_needed = self.ring_needed or ring
