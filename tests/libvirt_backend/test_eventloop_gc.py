"""``libvirt_backend/eventloop.py``: libvirt's handle and timer callbacks run with the cyclic
garbage collector paused (a collection inside one can free a ``virDomain`` whose connection
then takes the client lock the callback holds: a deadlock seen once in ``make test``)."""

from __future__ import annotations

import gc

import libvirtaio
import pytest

from autoextend.libvirt_backend.eventloop import GcPausedImpl, ensure_event_impl, gc_paused


def test_the_callback_runs_with_the_collector_off_and_it_is_back_on_after() -> None:
    seen: list[bool] = []

    def callback(*args: int) -> tuple[int, ...]:
        seen.append(gc.isenabled())
        return args

    wrapped = gc_paused(callback)
    assert gc.isenabled()
    assert wrapped(1, 2) == (1, 2)
    assert seen == [False] and gc.isenabled()


def test_a_raising_callback_leaves_the_collector_on() -> None:
    def boom() -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError):
        gc_paused(boom)()
    assert gc.isenabled()


def test_a_collector_already_off_stays_off() -> None:
    gc.disable()
    try:
        gc_paused(lambda: None)()
        assert not gc.isenabled()
    finally:
        gc.enable()


async def test_the_registered_implementation_wraps_libvirts_callbacks() -> None:
    ensure_event_impl()
    impl = libvirtaio.getCurrentImpl()
    assert isinstance(impl, GcPausedImpl)
    seen: list[bool] = []
    iden = impl._add_timeout(-1, lambda *args: seen.append(gc.isenabled()), None)
    try:
        impl.callbacks[iden].cb(iden, None)  # what the timer task calls when it fires
    finally:  # never started (timeout -1): no timer to stop and no free callback to run
        impl.callbacks.pop(iden)
        impl._pending_dec()
    assert seen == [False] and gc.isenabled()
