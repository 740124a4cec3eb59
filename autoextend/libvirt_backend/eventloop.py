"""libvirt's event implementation on the running asyncio loop, registered once per process.

``libvirtaio.virEventRegisterAsyncIOImpl`` may be called only once per process and stays
bound to the loop it was given. :func:`ensure_event_impl` registers it on the running loop
the first time and afterwards only checks that the caller runs on that same loop. It must be
called before a connection is opened (keepalive and events need it).

Python's cyclic garbage collector is paused while libvirt runs one of its handle or timer
callbacks (:class:`GcPausedImpl`). Why: libvirt calls those with its client lock held, and
calls back into Python inside them (``_update_handle``); an allocation there can start a
collection, and a collected ``virDomain`` whose connection was closed disposes of that
connection, which takes the same client lock: the loop thread deadlocks on itself, forever
(seen once in a clean-clone ``make test``: py-spy showed ``virDomain.__del__`` under
``_update_handle`` under a handle callback; libvirtd then dropped the client on keepalive).
Collections run as before between callbacks.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import libvirt
import libvirtaio

from autoextend.libvirt_backend.errors import EventLoopMismatch


def _silence(_ctx: Any, _err: Any) -> None:
    """libvirt's default handler prints every error to stderr; ours are raised and logged."""


def gc_paused(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` run with the cyclic garbage collector off (module doc), then back on as
    it was, also when it raises."""

    def call(*args: Any) -> Any:
        if not gc.isenabled():
            return callback(*args)
        gc.disable()
        try:
            return callback(*args)
        finally:
            gc.enable()

    return call


class GcPausedImpl(libvirtaio.virEventAsyncIOImpl):  # type: ignore[misc]
    """libvirtaio's implementation, with libvirt's callbacks run under :func:`gc_paused`."""

    def _add_handle(self, fd: int, event: int, cb: Any, opaque: Any) -> int:
        return int(super()._add_handle(fd, event, gc_paused(cb), opaque))

    def _add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        return int(super()._add_timeout(timeout, gc_paused(cb), opaque))


def ensure_event_impl() -> asyncio.AbstractEventLoop:
    """Register libvirtaio on the running loop if nobody did; return the loop it is bound to.

    Idempotent. Also installs a silent libvirt error handler (errors still raise
    ``libvirt.libvirtError``).

    Raises:
        EventLoopMismatch: not on an asyncio loop, or libvirtaio is bound to another loop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError as err:
        raise EventLoopMismatch("libvirtaio needs a running asyncio event loop") from err
    impl = libvirtaio.getCurrentImpl()
    if impl is None:
        libvirt.registerErrorHandler(_silence, None)
        # virEventRegisterAsyncIOImpl's own two steps, with our subclass: register it with
        # libvirt, and record it where libvirtaio.getCurrentImpl() looks.
        impl = GcPausedImpl(loop=loop).register()
        libvirtaio._current_impl = impl  # noqa: SLF001
    bound: object = impl.loop
    if bound is not loop:
        raise EventLoopMismatch(
            "libvirtaio was registered on another asyncio loop (it can be registered once "
            "per process); run all libvirt users on one loop"
        )
    return loop
