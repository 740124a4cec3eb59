"""libvirt events on the test's asyncio loop: one idempotent helper for every lab user.

``libvirtaio.virEventRegisterAsyncIOImpl()`` can run once per process and stays bound to its
loop. Tests, the lab and the libvirt backend all go through the backend's
:func:`~autoextend.libvirt_backend.eventloop.ensure_event_impl` (which checks libvirtaio's own
record), so whoever comes first registers and everyone else shares it.
"""

from __future__ import annotations

import asyncio

from autoextend.libvirt_backend.eventloop import ensure_event_impl


def ensure_libvirt_events() -> asyncio.AbstractEventLoop:
    """Register libvirtaio on the running loop once per process; return that loop.

    Call it before opening a libvirt connection whose events you want.

    Raises:
        EventLoopMismatch: no running asyncio loop, or libvirtaio is bound to another loop
            (pytest-asyncio must run with one session-scoped loop, as configured).
    """
    return ensure_event_impl()
