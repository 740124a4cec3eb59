"""Issue 27 item 1: the SPM refuses to reduce a volume a live host has open, by the hosts'
in-use records (``spm/inusegate.py``), with the real host mailbox, the real SPM mail server
and real in-use publishers on in-memory storage.

The race test injects the other host's open at each of the SPM's looks at the records (the
timing is injected: a real-process race is not controllable to that precision)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import pytest

from autoextend.clock import MonotonicClock
from autoextend.errors import NotSpmError
from autoextend.lab.waiting import until
from autoextend.sectorfakes import MemoryStorage
from autoextend.sectors import StorageError
from autoextend.spm import intent, inuse
from autoextend.spm.host import HostMailbox
from autoextend.spm.inusegate import InUseGate
from autoextend.spm.inusepub import InUsePublisher
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.spm.wire import OP_REDUCE, OP_REDUCE_CHECK, Reply, Status
from autoextend.volumes import LocalAuthority, VolumeRef

from .fakes import FAST, VG, VOL, ReducingBackend, Watched, layout_for

MiB = 1 << 20
NO_HOT = FAST.model_copy(update={"hot_window_s": 0.0})  # only the in-use check refuses
PERIOD = 0.05  # the publishers' period (the shipped one is 2 s)


class Rig:
    """Host 1 asks, host 2 runs guests; both publish; host 1 is also the SPM."""

    def __init__(self) -> None:
        self.layout: MailboxLayout = layout_for(FAST)
        self.storage = Watched(MemoryStorage(self.layout.end, 512))
        # The SPM's looks: its reads of the records of hosts 1, 2, .. in one run (8 KiB+);
        # a publisher reads only its own record (4 KiB), once at start.
        self.looks = 0
        self.on_look: dict[int, list[str]] = {}
        self.storage.on_read = self._read
        self.backend = ReducingBackend(256 * MiB)
        self.states: dict[int, tuple[str, int]] = {1: ("live", 11), 2: ("live", 22)}
        self.open: dict[int, list[str]] = {1: [], 2: []}
        clock = MonotonicClock()
        self.gate = InUseGate(self.storage, self.layout, lambda: self.states, clock,
                              period_s=PERIOD, margin_s=0.2)
        self.publishers = {
            h: InUsePublisher(self.storage, self.layout, h, self._source(h),
                              partial(self._generation, h), clock, period_s=PERIOD)
            for h in (1, 2)}
        self.server = SpmMailServer(self.storage, self.backend, [VG], layout=self.layout,
                                    authority=LocalAuthority(), settings=NO_HOT,
                                    in_use=self.gate)
        self.host = HostMailbox(self.storage, self.layout, 1, FAST)

    def _read(self, offset: int, length: int) -> None:
        """Before the n-th look reads, host 2 opens what ``on_look[n]`` says."""
        if offset == self.layout.inuse_offset(1) and length >= 2 * inuse.RECORD_BYTES:
            self.looks += 1
            self.open[2].extend(self.on_look.get(self.looks, []))

    def _generation(self, host: int) -> int:
        return self.states[host][1]

    def _source(self, host: int) -> Callable[[], Awaitable[list[str]]]:
        async def names() -> list[str]:
            return list(self.open[host])
        return names

    async def ask(self, op: int = OP_REDUCE, *, stop: tuple[int, ...] = ()) -> Reply:
        async with anyio.create_task_group() as tg:
            for h, pub in self.publishers.items():
                if h not in stop:
                    await tg.start(pub.run)
                else:
                    await pub.start()
                    await pub.publish_once()  # one record, then silent: stale
            await tg.start(self.host.run)
            await tg.start(self.server.run)
            reply = await self.host.request(VOL, 100 * MiB, op=op)
            tg.cancel_scope.cancel()
        return reply


async def test_a_volume_open_on_another_live_host_is_not_reduced() -> None:
    rig = Rig()
    rig.open[2].append(str(VOL))
    reply = await rig.ask()
    assert reply.status is Status.REJECTED and "in use on host 2" in reply.text
    assert rig.backend.sizes[VOL] == 256 * MiB and rig.backend.reduces == []


async def test_the_dry_run_says_the_same() -> None:
    rig = Rig()
    rig.open[2].append(str(VOL))
    reply = await rig.ask(OP_REDUCE_CHECK)
    assert reply.status is Status.REJECTED and "host 2" in reply.text


async def test_a_volume_open_nowhere_is_reduced() -> None:
    rig = Rig()
    rig.open[2].append(f"{VG}/other")
    reply = await rig.ask()
    assert (reply.status, reply.size) == (Status.OK, 100 * MiB)
    assert rig.backend.sizes[VOL] == 100 * MiB


async def test_a_dead_hosts_record_does_not_count() -> None:
    rig = Rig()
    rig.open[2].append(str(VOL))
    rig.states[2] = ("dead", 22)
    reply = await rig.ask()
    assert reply.status is Status.OK and rig.backend.sizes[VOL] == 100 * MiB


@pytest.mark.parametrize("state", ["live", "fail", "unknown"])
async def test_a_stale_record_of_a_host_not_dead_refuses(state: str) -> None:
    rig = Rig()
    rig.states[2] = (state, 22)
    reply = await rig.ask(stop=(2,))
    assert reply.status is Status.REJECTED and "host 2" in reply.text
    assert "stale" in reply.text and rig.backend.sizes[VOL] == 256 * MiB


async def test_an_unreadable_or_missing_record_refuses() -> None:
    rig = Rig()
    rig.states[3] = ("live", 33)  # never published
    reply = await rig.ask()
    assert reply.status is Status.REJECTED and "host 3" in reply.text
    rig = Rig()
    rig.states[3] = ("live", 33)
    await rig.storage.write(rig.layout.inuse_offset(3), b"\xff" * 512)
    reply = await rig.ask()
    assert reply.status is Status.REJECTED and "host 3" in reply.text
    assert "unreadable" in reply.text and rig.backend.sizes[VOL] == 256 * MiB


# The race: host 2 opens the volume while host 1's reduce is in flight, at the SPM's n-th
# look at the records (1 = the first look, 2.. = the settle's looks, the last = the second
# look, made with the VG's lock held right before the reduce).


@pytest.mark.parametrize("at_look", [1, 2, 3])
async def test_an_open_during_the_first_look_or_the_settle_is_refused(at_look: int) -> None:
    rig = Rig()
    rig.on_look[at_look] = [str(VOL)]
    reply = await rig.ask()
    assert rig.open[2] == [str(VOL)]  # the open happened, while the reduce was in flight
    assert reply.status is Status.REJECTED and "in use on host 2" in reply.text
    assert rig.backend.sizes[VOL] == 256 * MiB


async def test_what_is_built_the_open_in_the_last_window_is_not_seen() -> None:
    """An open after the second look's read is not refused: the SPM's looks cannot see the
    future. This is the window the intent record closes for opens that go through the host's
    claim (the tests below), and the monitor's shrink check for the others."""
    rig = Rig()
    rig.on_look[10_000] = [str(VOL)]  # never during the looks
    reply = await rig.ask()
    assert reply.status is Status.OK and rig.backend.sizes[VOL] == 100 * MiB
    assert rig.looks >= 3  # a first look, a settle, a second look


# The last window, closed by the intent record (``inusegate.py``): host 2 claims the volume
# (``InUsePublisher.claim``, what it does before a guest opens it) while the reduce is in
# flight, at each moment of the SPM's work. Never both proceed.

MOMENTS = ["before-the-intent", "first-look", "settle", "second-look", "after-lvreduce"]


async def claim_during_the_reduce(moment: str) -> tuple[str | None, Reply, Rig]:
    rig = Rig()
    rig.backend.after_apply = anyio.Event()  # the reduce waits after lvreduce, intent held
    claimed: list[str | None] = []
    at = {"first-look": 1, "settle": 2, "second-look": None}
    real_write = rig.storage.write
    claimed_before = anyio.Event()

    async def write(offset: int, data: bytes) -> None:
        # "before-the-intent": host 2's whole claim (its write, then its read of the
        # intent record) runs right before the SPM writes its intent.
        if offset == rig.layout.intent_offset and not claimed and moment == "before-the-intent":
            claimed.append(await rig.publishers[2].claim(str(VOL)))
            claimed_before.set()
        await real_write(offset, data)

    rig.storage.write = write  # type: ignore[method-assign]

    async def claimer() -> None:
        if moment == "before-the-intent":
            await claimed_before.wait()
            assert rig.backend.after_apply is not None
            rig.backend.after_apply.set()
            return
        if moment == "after-lvreduce":
            await until(lambda: rig.backend.reduces != [], 30, "the lvreduce")
        elif moment == "second-look":
            # Right before the second look: when the settle's looks are done, the next look
            # is the second one; claim when the looks stop moving for half a period.
            await until(lambda: rig.looks >= 3, 30, "the settle")
            seen = -1
            while seen != rig.looks:
                seen = rig.looks
                await anyio.sleep(PERIOD / 4)  # poll: the looks are counted, not signalled
        else:
            n = at[moment]
            assert n is not None
            await until(lambda: rig.looks >= n, 30, f"look {n}")
        claimed.append(await rig.publishers[2].claim(str(VOL)))
        assert rig.backend.after_apply is not None
        rig.backend.after_apply.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(claimer)
        reply = await rig.ask()
    assert len(claimed) == 1
    return claimed[0], reply, rig


@pytest.mark.parametrize("moment", MOMENTS)
async def test_never_both_the_reduce_and_the_open_proceed(moment: str) -> None:
    refused, reply, rig = await claim_during_the_reduce(moment)
    opened = refused is None
    assert not (opened and reply.status is Status.OK), (refused, reply)
    if opened:  # the SPM saw the claim in host 2's record
        assert "in use on host 2" in reply.text and rig.backend.sizes[VOL] == 256 * MiB
    else:  # host 2 saw the SPM's intent (the SPM may also have seen the claim: both wait)
        assert refused is not None and "being shrunk" in refused and str(VOL) in refused
        assert str(VOL) not in rig.publishers[2].claims
    if reply.status is Status.OK:
        assert rig.backend.sizes[VOL] == 100 * MiB
    else:
        assert rig.backend.sizes[VOL] == 256 * MiB and rig.backend.reduces == []
    # Both sides of the argument are reached: the claim made before the intent goes on and
    # the SPM refuses; a claim while the lvreduce runs is refused and the reduce goes on.
    if moment == "before-the-intent":
        assert opened and reply.status is Status.REJECTED
    if moment == "after-lvreduce":
        assert not opened and reply.status is Status.OK


async def test_after_the_reduce_the_intent_is_gone_and_the_open_goes_on() -> None:
    rig = Rig()
    reply = await rig.ask()
    assert reply.status is Status.OK
    raw = await rig.storage.read(rig.layout.intent_offset, intent.RECORD_BYTES)
    assert intent.decode(raw) == frozenset()
    assert await rig.publishers[2].claim(str(VOL)) is None  # a view made now is 100 MiB
    assert str(VOL) in rig.publishers[2].claims


async def test_the_intent_names_the_volume_and_the_request_while_in_flight() -> None:
    rig = Rig()
    rig.backend.after_apply = anyio.Event()
    seen: list[frozenset[intent.Intent]] = []

    async def look_at_it() -> None:
        await until(lambda: rig.backend.reduces != [], 30, "the lvreduce")
        raw = await rig.storage.read(rig.layout.intent_offset, intent.RECORD_BYTES)
        seen.append(intent.decode(raw))
        assert rig.backend.after_apply is not None
        rig.backend.after_apply.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(look_at_it)
        reply = await rig.ask()
    assert reply.status is Status.OK
    (one,) = seen[0]
    assert one.volume_hash == inuse.volume_hash(str(VOL)) and one.host == 1
    assert one.op == OP_REDUCE


async def test_an_intent_that_cannot_be_written_refuses_the_reduce() -> None:
    rig = Rig()
    real_write = rig.storage.write

    async def write(offset: int, data: bytes) -> None:
        if offset == rig.layout.intent_offset:
            raise StorageError(rig.storage.path, "write", offset, len(data), "injected")
        await real_write(offset, data)

    rig.storage.write = write  # type: ignore[method-assign]
    reply = await rig.ask()
    assert reply.status is Status.REJECTED and "intent" in reply.text
    assert rig.backend.sizes[VOL] == 256 * MiB


async def test_a_corrupt_intent_record_refuses_every_claim() -> None:
    rig = Rig()
    await rig.storage.write(rig.layout.intent_offset, b"\xff" * 512)
    pub = rig.publishers[2]
    await pub.start()
    refused = await pub.claim(str(VOL))
    assert refused is not None and "unreadable" in refused and not pub.claims


async def test_the_settle_does_not_hold_up_the_vgs_extends() -> None:
    """The wait between the two looks is made before the VG's lock: an extend of another
    volume of the VG asked meanwhile is answered before the reduce."""
    rig = Rig()
    other = VolumeRef(VG, "lv2")
    rig.backend.sizes[other] = 64 * MiB
    rig.states[3] = ("live", 33)  # publishes once, then is silent: the settle runs out
    order: list[str] = []
    silent = InUsePublisher(rig.storage, rig.layout, 3, rig._source(1), lambda: 33,
                            MonotonicClock(), period_s=PERIOD)
    await silent.start()
    await silent.publish_once()

    async def extend_during_the_settle() -> None:
        await until(lambda: rig.looks >= 2, 30, "the settle")
        reply = await rig.host.request(other, 128 * MiB)
        assert reply.status is Status.OK
        order.append("extend")

    async with anyio.create_task_group() as tg:
        tg.start_soon(extend_during_the_settle)
        reply = await rig.ask()
        order.append("reduce")
    assert reply.status is Status.REJECTED and "host 3" in reply.text
    assert order == ["extend", "reduce"] and rig.backend.sizes[other] == 128 * MiB


async def test_a_previous_spms_intent_is_cleared_when_the_server_starts() -> None:
    rig = Rig()
    left = intent.intent(str(VOL), OP_REDUCE, 2, 9)  # an SPM that died mid-reduce
    await rig.storage.write(rig.layout.intent_offset, intent.encode([left], 512))
    pub = rig.publishers[2]
    await pub.start()
    refused = await pub.claim(str(VOL))
    assert refused is not None and "request 9 of host 2" in refused
    reply = await rig.ask()  # starts this term's server: the record is written empty first
    assert reply.status is Status.OK
    raw = await rig.storage.read(rig.layout.intent_offset, intent.RECORD_BYTES)
    assert intent.decode(raw) == frozenset()
    assert await pub.claim(str(VOL)) is None


async def test_an_spm_whose_term_ended_leaves_its_intent_for_the_next_one() -> None:
    """A fenced SPM must not overwrite its successor's record: its intent stays (opens of
    that volume wait) until the next SPM's server writes the record empty."""
    rig = Rig()

    class Lost:
        def check(self) -> None:
            raise NotSpmError("term over")

    async with rig.gate.guard(str(VOL), OP_REDUCE, 1, 5, Lost()):
        pass
    raw = await rig.storage.read(rig.layout.intent_offset, intent.RECORD_BYTES)
    assert intent.names(intent.decode(raw), str(VOL)) == intent.intent(str(VOL), OP_REDUCE, 1, 5)
    async with rig.gate.guard(str(VOL), OP_REDUCE, 1, 6):  # no authority: always taken back
        pass
    raw = await rig.storage.read(rig.layout.intent_offset, intent.RECORD_BYTES)
    assert intent.decode(raw) == frozenset()
