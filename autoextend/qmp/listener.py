"""Bounded intake for qemu.qmp: events, and the JSON of every message.

qemu.qmp parses each line QEMU sends with ``json.loads``: a line nested 100,000 deep raises
``RecursionError`` and one with a 5,000-digit integer a plain ``ValueError``, neither of which
the library expects. :func:`new_client`'s client refuses a line nested deeper than
:data:`MAX_DEPTH` and turns any parse failure into qemu.qmp's own ``DeserializationError``,
which ends that connection only (the backend reconnects with backoff).

qemu.qmp's :class:`EventListener` keeps an unbounded queue and an unbounded ``_history``,
and every client has a default catch-all listener (``client.events``) that stores every
event forever unless drained. :func:`new_client` returns a client whose default listener
accepts nothing; :class:`BoundedListener` keeps at most ``maxsize`` events, no history, and
never blocks QEMU's reader: when full it drops the event and raises a flag that the
consumer turns into a resynchronisation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

from qemu.qmp import EventListener, Message, QMPClient
from qemu.qmp.error import ProtocolError
from qemu.qmp.message import DeserializationError

from autoextend import boundedjson

#: QMP replies nest a few levels per backing-chain element (``backing-image``); 512 allows a
#: chain of well over a hundred images and stays far from the interpreter's recursion limit.
MAX_DEPTH = 512
#: Longest line accepted from QEMU (qemu.qmp's default, as libvirt's).
MAX_LINE = 10 * 1024 * 1024


class UnreadableMessage(DeserializationError):
    """A line from QEMU that is not a QMP message we can parse (short, unlike the library's
    error, which quotes the whole line)."""

    def __init__(self, reason: str, raw: bytes) -> None:
        super().__init__(reason, raw[:120])
        self.reason = reason

    def __str__(self) -> str:
        return f"unreadable QMP message: {self.reason}"


class BoundedClient(QMPClient):
    """QMPClient whose reader never lets a parse error other than the library's escape, and
    that serialises a message for its debug log only when that log is on."""

    # qemu.qmp's filters log every message with an eager ``str(msg)``: each reply is turned
    # back into JSON for a debug line that is then dropped. With 50 VMs of 20 drives that
    # was a third of an idle service's CPU (the drive watch's ``query-block`` replies).
    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", str(msg))
        return msg

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", str(msg))
        return msg

    async def _do_recv(self) -> Message:
        raw = await self._readline()
        try:
            boundedjson.check_depth(raw, MAX_DEPTH)
            return Message(raw, eager=True)
        except ProtocolError as err:  # the library's own (its text quotes the whole line)
            raise UnreadableMessage(err.error_message[:200], raw) from None
        except (ValueError, RecursionError) as err:
            raise UnreadableMessage(str(err)[:200] or type(err).__name__, raw) from None


def _accept_nothing(event: Message) -> bool:
    return False


def new_client(name: str) -> QMPClient:
    """A QMPClient whose built-in ``events`` listener never stores anything."""
    client = BoundedClient(name, readbuflen=MAX_LINE)
    client.events.accept = _accept_nothing  # type: ignore[method-assign]
    return client


class BoundedListener(EventListener):
    """An EventListener holding at most ``maxsize`` pending events and no history."""

    def __init__(self, names: Iterable[str] | None, maxsize: int, *,
                 trace: deque[tuple[str, str]] | None = None) -> None:
        super().__init__(list(names) if names is not None else None)
        self._trace = trace  # every event's name is appended as ("event", name)
        self._queue = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self._overflowed = False
        # Set on receipt (not when the queue is pumped, which a lost connection cancels):
        # QEMU's SHUTDOWN of a guest that powered itself off (reduce_on_stop).
        self.guest_shutdown = False
        # Set on receipt too: the status of the last MIGRATION event read from the socket
        # (None: none yet). The reader takes messages in the order QEMU sent them, so any
        # reply read after a migration started comes after its MIGRATION event.
        self.migration_status: str | None = None

    async def put(self, event: Message) -> None:
        """Called by the client's reader: enqueue without ever waiting."""
        name = event.get("event")
        if self._trace is not None and isinstance(name, str):
            self._trace.append(("event", name[:64]))
        if event.get("event") == "SHUTDOWN":  # remembered, never queued
            data = event.get("data")
            self.guest_shutdown = (isinstance(data, dict) and data.get("guest") is True
                                   and data.get("reason") == "guest-shutdown")
        if event.get("event") == "MIGRATION":
            data = event.get("data")
            status = data.get("status") if isinstance(data, dict) else None
            # Anything but a short string counts as "a migration may run" (the check asks).
            self.migration_status = status if isinstance(status, str) and len(status) <= 64 \
                else "unknown"
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
