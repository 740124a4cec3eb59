"""DomainTracker: callbacks and listings -> events, without libvirt (plain objects stand in
for the ``virDomain`` handles libvirt passes to callbacks)."""

from __future__ import annotations

import anyio
import libvirt
from anyio.streams.memory import MemoryObjectReceiveStream

from autoextend.libvirt_backend.tracker import DomainTracker
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    EnospcPause,
    HypervisorEvent,
    PauseReason,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
    VmPaused,
    VmResumed,
)

E = libvirt
CONN = object()  # the opaque the current connection registered its callbacks with


class Dom:
    def __init__(self, name: str) -> None:
        self._name = name

    def name(self) -> str:
        return self._name


def tracker(size: int = 64) -> tuple[DomainTracker, MemoryObjectReceiveStream[HypervisorEvent]]:
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](size)
    t = DomainTracker()
    t.events = send
    t.current = CONN
    return t, receive


def drain(receive: MemoryObjectReceiveStream[HypervisorEvent]) -> list[HypervisorEvent]:
    out: list[HypervisorEvent] = []
    while True:
        try:
            out.append(receive.receive_nowait())
        except anyio.WouldBlock:
            return out


def test_enospc_pause_sequence() -> None:
    t, receive = tracker()
    drive = DriveInfo("vm1", "vda[1]", "vda[1]", "/dev/loop3", 1 << 30, 64 << 20, 64 << 20)
    t.drives_seen("vm1", [drive])
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_threshold(None, Dom("vm1"), "vda", "/dev/loop3", 10, 1, CONN)      # duplicate: dropped
    t.on_threshold(None, Dom("vm1"), "vda[1]", "/dev/loop3", 10, 1, CONN)
    t.on_io_error(None, Dom("vm1"), "/dev/loop3", "virtio-disk0", 1, "enospc", CONN)
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_SUSPENDED,
                   E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, CONN)
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_RESUMED, 0, CONN)
    assert drain(receive) == [
        VmAppeared("vm1"),
        ThresholdCrossed("vm1", "vda[1]", 10, 1),
        EnospcPause("vm1", "vda[1]"),
        VmPaused("vm1", PauseReason.ENOSPC),
        VmResumed("vm1"),
    ]
    assert "vm1" in t.active and "vm1" not in t.enospc_seen


def test_io_error_pause_without_enospc_is_classified_not_guessed() -> None:
    t, receive = tracker()
    t.on_io_error(None, Dom("vm1"), "/dev/loop3", "virtio-disk0", 1, "", CONN)
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_SUSPENDED,
                   E.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, CONN)
    assert drain(receive) == []
    assert t.classify.names == {"vm1"}


def test_callbacks_of_an_old_connection_are_ignored() -> None:
    t, receive = tracker()
    old = object()
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STARTED, 0, old)
    t.on_threshold(None, Dom("vm1"), "vda[1]", "/dev/loop3", 10, 1, old)
    t.on_io_error(None, Dom("vm1"), "/dev/loop3", "a", 1, "enospc", old)
    t.on_device_change(None, Dom("vm1"), "virtio-disk1", old)
    assert drain(receive) == []
    assert not t.active


def test_stopped_forgets_and_device_changes_only_for_running_vms() -> None:
    t, receive = tracker()
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_device_change(None, Dom("vm1"), "virtio-disk1", CONN)
    t.on_lifecycle(None, Dom("vm1"), E.VIR_DOMAIN_EVENT_STOPPED, 1, CONN)
    t.on_device_change(None, Dom("vm1"), "virtio-disk1", CONN)
    assert drain(receive) == [VmAppeared("vm1"), DrivesChanged("vm1"), VmGone("vm1")]
    assert not t.active


def test_a_broken_domain_handle_does_not_escape_the_callback() -> None:
    class Broken:
        def name(self) -> str:
            raise libvirt.libvirtError("gone")

    t, receive = tracker()
    t.on_lifecycle(None, Broken(), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_threshold(None, Broken(), "vda[1]", "/dev/loop3", 10, 1, CONN)
    assert drain(receive) == []


def test_reconcile_announces_new_and_vanished() -> None:
    t, receive = tracker()
    t.reconcile({"a", "b"}, {}, announce_all=False)
    assert drain(receive) == [VmAppeared("a"), VmAppeared("b")]
    t.reconcile({"b", "c"}, dict(t.event_seq), announce_all=False)
    assert drain(receive) == [VmAppeared("c"), VmGone("a")]
    t.reconcile({"b", "c"}, dict(t.event_seq), announce_all=True)  # after a reconnect
    assert drain(receive) == [VmAppeared("b"), VmAppeared("c")]


def test_reconcile_defers_to_events_newer_than_the_listing() -> None:
    t, receive = tracker()
    t.reconcile({"a"}, {}, announce_all=False)
    drain(receive)
    before = dict(t.event_seq)
    # While the listing (which still shows "a" and not "b") was being read:
    t.on_lifecycle(None, Dom("a"), E.VIR_DOMAIN_EVENT_STOPPED, 0, CONN)
    t.on_lifecycle(None, Dom("b"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    assert drain(receive) == [VmGone("a", clean=True), VmAppeared("b")]
    t.reconcile({"a"}, before, announce_all=True)
    assert drain(receive) == []  # neither resurrects "a" nor drops "b"
    assert t.active == {"b"}


def test_full_stream_marks_a_resync_instead_of_blocking() -> None:
    t, receive = tracker(size=1)
    t.on_lifecycle(None, Dom("a"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_lifecycle(None, Dom("b"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    t.on_threshold(None, Dom("c"), "vda[1]", "/dev/loop3", 10, 1, CONN)
    assert drain(receive) == [VmAppeared("a")]
    assert t.resync.names == {"b", "c"}


def test_closed_stream_is_ignored() -> None:
    t, receive = tracker()
    receive.close()
    t.on_lifecycle(None, Dom("a"), E.VIR_DOMAIN_EVENT_STARTED, 0, CONN)
    assert t.active == {"a"}


async def test_pending_vms_wake_and_drain() -> None:
    t, _ = tracker()
    got: list[set[str]] = []

    async def taker() -> None:
        got.append(await t.resync.take())

    async with anyio.create_task_group() as tg:
        tg.start_soon(taker)
        await anyio.wait_all_tasks_blocked()  # the taker waits (a taker that did not, is done)
        assert got == []
        t.resync.add("a")
        t.resync.add("b")
    assert got == [{"a", "b"}]
    assert t.resync.names == set()


def test_started_migrated_marks_an_incoming_domain() -> None:
    """STARTED/MIGRATED is the fact that a domain came here by migration (the monitor's
    handoff of an arrived pause needs it: monitor/handoff.py); STOPPED forgets it."""
    t, receive = tracker()
    t.on_lifecycle(None, Dom("a"), E.VIR_DOMAIN_EVENT_STARTED,
                   E.VIR_DOMAIN_EVENT_STARTED_BOOTED, CONN)
    t.on_lifecycle(None, Dom("b"), E.VIR_DOMAIN_EVENT_STARTED,
                   E.VIR_DOMAIN_EVENT_STARTED_MIGRATED, CONN)
    assert t.incoming == {"b"}
    assert drain(receive) == [VmAppeared("a"), VmAppeared("b")]
    t.on_lifecycle(None, Dom("b"), E.VIR_DOMAIN_EVENT_STOPPED, 0, CONN)
    assert t.incoming == set()
