"""One request in flight on the host, and everybody waiting for its reply.

A :class:`Pending` is made by the first caller asking for a volume; later callers join it
(asking for no more) or supersede it (asking for more: a new id, the larger size). Which
waiters a reply answers is decided here (:meth:`Pending.answered_by`, pure):

- the reply to the current id, OK: every waiter;
- the reply to the current id, FAILED or REJECTED: the waiters that asked for the size in
  flight; anyone who joined asking for less is asked for again on their own (the larger size
  may be exactly what was wrong);
- an OK reply to an earlier (superseded) id: the waiters that asked no more than it reports;
- anything else: nobody.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from autoextend.spm.wire import OP_EXTEND, Reply, Request, Status
from autoextend.volumes import VolumeRef


@dataclass(eq=False)
class Waiter:
    """One caller of ``HostMailbox.request``: done is set once it has its answer."""

    size: int
    deadline: float
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Reply | None = None
    closed: bool = False  # the mailbox stopped (no reply, no timeout)


@dataclass(eq=False)
class Pending:
    """A request queued for a slot (``slot`` None) or written into one, and its waiters."""

    volume: VolumeRef
    size: int
    request_id: int
    created: float
    slot: int | None = None
    op: int = OP_EXTEND
    vsize: int = 0  # a create's virtual size (wire.Request.vsize)
    parent: str = ""  # a snapshot create's parent LV (wire.Request.parent)
    waiters: list[Waiter] = field(default_factory=list)
    earlier: dict[int, int] = field(default_factory=dict)  # superseded id -> its size

    def request(self) -> Request:
        """What goes into the slot."""
        return Request(self.request_id, self.volume.vg, self.volume.lv, self.size, self.op,
                       self.vsize, self.parent)

    def reissue(self, request_id: int, size: int, now: float) -> None:
        """A new id for ``size`` (supersede, or ask again); the old id is remembered."""
        self.earlier[self.request_id] = self.size
        self.request_id = request_id
        self.size = size
        self.created = now

    def drop(self, waiter: Waiter) -> None:
        """A waiter leaves without an answer (cancelled)."""
        if waiter in self.waiters:
            self.waiters.remove(waiter)

    def finish(self, waiters: list[Waiter], reply: Reply | None = None) -> None:
        """Answer ``waiters`` (reply None: timed out, or closed when marked so)."""
        for waiter in waiters:
            self.waiters.remove(waiter)
            waiter.reply = reply
            waiter.done.set()

    def expired(self, now: float) -> list[Waiter]:
        return [w for w in self.waiters if w.deadline <= now]

    def answered_by(self, reply: Reply) -> tuple[list[Waiter], int | None]:
        """The waiters ``reply`` answers, and the size to ask for again on its own (the
        waiters that asked for less than a size that failed), or None (pure)."""
        if reply.request_id == self.request_id and reply.status is not Status.OK:
            rest = [w for w in self.waiters if w.size < self.size]
            if rest:
                return ([w for w in self.waiters if w.size >= self.size],
                        max(w.size for w in rest))
            return list(self.waiters), None
        if reply.request_id == self.request_id:
            return list(self.waiters), None
        if reply.request_id in self.earlier and reply.status is Status.OK:
            return [w for w in self.waiters if w.size <= reply.size], None
        return [], None
