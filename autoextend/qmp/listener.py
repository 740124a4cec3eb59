"""Bounded event intake for qemu.qmp, which would otherwise buffer events without limit.

qemu.qmp's :class:`EventListener` keeps an unbounded queue and an unbounded ``_history``,
and every client has a default catch-all listener (``client.events``) that stores every
event forever unless drained. :func:`new_client` returns a client whose default listener
accepts nothing; :class:`BoundedListener` keeps at most ``maxsize`` events, no history, and
never blocks QEMU's reader: when full it drops the event and raises a flag that the
consumer turns into a resynchronisation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from qemu.qmp import EventListener, Message, QMPClient


def _accept_nothing(event: Message) -> bool:
    return False


def new_client(name: str) -> QMPClient:
    """A QMPClient whose built-in ``events`` listener never stores anything."""
    client = QMPClient(name)
    client.events.accept = _accept_nothing  # type: ignore[method-assign]
    return client


class BoundedListener(EventListener):
    """An EventListener holding at most ``maxsize`` pending events and no history."""

    def __init__(self, names: Iterable[str] | None, maxsize: int) -> None:
        super().__init__(list(names) if names is not None else None)
        self._queue = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self._overflowed = False

    async def put(self, event: Message) -> None:
        """Called by the client's reader: enqueue without ever waiting."""
        if not self.accept(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            self._overflowed = True

    def take_overflow(self) -> bool:
        """True (once) if events were dropped since the last call."""
        overflowed, self._overflowed = self._overflowed, False
        return overflowed
