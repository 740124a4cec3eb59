"""libvirt's event implementation on the running asyncio loop, registered once per process.

``libvirtaio.virEventRegisterAsyncIOImpl`` may be called only once per process and stays
bound to the loop it was given. :func:`ensure_event_impl` registers it on the running loop
the first time and afterwards only checks that the caller runs on that same loop. It must be
called before a connection is opened (keepalive and events need it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import libvirt
import libvirtaio

from autoextend.libvirt_backend.errors import EventLoopMismatch


def _silence(_ctx: Any, _err: Any) -> None:
    """libvirt's default handler prints every error to stderr; ours are raised and logged."""


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
        impl = libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    bound: object = impl.loop
    if bound is not loop:
        raise EventLoopMismatch(
            "libvirtaio was registered on another asyncio loop (it can be registered once "
            "per process); run all libvirt users on one loop"
        )
    return loop
