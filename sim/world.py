"""One simulated world: N hosts running the real lease, mailbox and SPM server on a simulated
disk, under seeded faults, with the invariants checked as it runs.

Everything random comes from ``random.Random`` streams derived from the seed; time is the
virtual loop's (``sim/vloop.py``); there are no threads. The same seed gives the same trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections import deque
from functools import partial
from typing import Literal

import anyio
from anyio.abc import TaskGroup

from autoextend.checks import ALL_ON, Checks
from autoextend.errors import NotSpmError
from autoextend.lease.area import format_area
from autoextend.lease.config import LeaseSettings
from autoextend.lease.layout import LeaseLayout, mailbox_offset
from autoextend.lease.liveness import HostState
from autoextend.lease.priority import MAX_LEVELS, NEVER, POLLS_PER_LEVEL
from autoextend.lease.service import LeaseService, SpmTerm
from autoextend.lease.timeouts import lease_timeouts
from autoextend.spm.config import MailboxSettings
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.host import HostMailbox
from autoextend.spm.inusegate import InUseGate, lease_states
from autoextend.spm.inusepub import InUsePublisher
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.spm.wire import Status
from autoextend.volumes import VolumeRef
from sim.config import MUTATIONS, SimConfig, Stats
from sim.disk import HostStorage, SimDisk
from sim.elections import elections
from sim.faults import FaultDriver
from sim.host import Incarnation, SimClock, SimWatchdog
from sim.reduces import ReduceTraffic, reduce_checks
from sim.views import ViewTraffic
from sim.volumes import SimVolumeBackend, SimVolumes

GiB = 1 << 30
MiB = 1 << 20
SECTOR: Literal[512] = 512
VGS = ("vg0", "vg1")
SAMPLE_S = 5.0  # the sampled checks' period (the SPM check also runs at every term start)


class World(FaultDriver):
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        # Every host of this world is built with these (one check off under a mutation).
        self.checks = mutant_checks(cfg.mutation)
        self.loop = asyncio.get_running_loop()
        self.stats = Stats()
        self._hash = hashlib.blake2b(digest_size=16)
        self.closed = False
        self.tail: deque[str] = deque(maxlen=400)
        self.lines = 0
        seeds = random.Random(cfg.seed)
        self.rng_faults = random.Random(seeds.getrandbits(64))
        self.rng_disk = random.Random(seeds.getrandbits(64))
        self.rng_hosts = random.Random(seeds.getrandbits(64))
        rng_views = random.Random(seeds.getrandbits(64))
        t, w = cfg.io_timeout, cfg.watchdog
        self.timeouts = lease_timeouts(t, w)
        self.max_hosts = max(8, cfg.hosts)
        self.mailbox = MailboxSettings(
            max_hosts=self.max_hosts, poll_interval_s=5.0, hot_window_s=60.0,
            reply_poll_interval_s=2.0, reply_poll_max_s=10.0, ring_retry_initial_s=5.0,
            ring_retry_max_s=30.0, request_timeout_s=900.0, full_scan_interval_s=300.0,
            max_request_bytes=1 << 40,
        )
        self.layout = MailboxLayout(mailbox_offset(0), SECTOR, self.max_hosts)
        size = -(-self.layout.end // 4096) * 4096
        self.disk = SimDisk(size, SECTOR, t, self.rng_disk, self.trace)
        self.volumes = SimVolumes()
        for h in range(1, cfg.hosts + 1):
            for k in range(cfg.volumes_per_host):
                vol = VolumeRef(VGS[k % len(VGS)], f"h{h}-disk{k}")
                self.volumes.sizes[vol] = GiB
                self.volumes.caps[vol] = self.mailbox.max_request_bytes
                self.volumes.owner[vol] = h
        self.current: dict[int, Incarnation] = {}
        self.terms: list[tuple[Incarnation, SpmTerm]] = []
        self.max_lver = 0
        self.asked: set[tuple[VolumeRef, int]] = set()
        self.outstanding: dict[int, tuple[Incarnation, VolumeRef, int, float]] = {}
        self._next_req = 0
        self.violation: str | None = None
        self.stop = anyio.CancelScope()
        # An elections world (sim/elections.py) has no faults: it runs for ``duration``.
        self.run_end = self.loop.time() + cfg.duration
        self.fault_end = self.loop.time() if cfg.elections else self.run_end
        self.last_fault = self.loop.time()
        # Liveness: after the last fault, a host is SPM within this (a host that lost its
        # host id rejoins after expiry + W; then the worst-case takeover).
        tt = self.timeouts
        self.takeover_bound = (tt.lease_expiry + w) + 2 * t + tt.takeover_max_worst + 4 * t
        if len(set(map(str, cfg.priorities))) > 1:  # a lower host may yield first
            self.takeover_bound += MAX_LEVELS * POLLS_PER_LEVEL * tt.acquire_poll
        self.answer_bound = self.mailbox.request_timeout_s + 2 * self.mailbox.reply_poll_max_s
        self.reduces = ReduceTraffic(self)
        self.views = ViewTraffic(self, rng_views)

    # ---- trace -------------------------------------------------------------------------

    def trace(self, line: str, *, last: bool = False) -> None:
        if self.closed:
            return
        # Once the world stops (its end, or a violation), tasks are cancelled in an order
        # that depends on object addresses: nothing after that instant is traced.
        self.closed = last
        text = f"{self.loop.time():.6f} {line}"
        self._hash.update(text.encode())
        self._hash.update(b"\n")
        self.tail.append(text)
        self.lines += 1

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def fail(self, what: str) -> None:
        self.trace(f"VIOLATION {what}", last=True)
        if self.violation is None:
            self.violation = what
            self.stop.cancel()  # stop the world at the first violation

    # ---- invariants --------------------------------------------------------------------

    def valid_terms(self) -> list[tuple[Incarnation, SpmTerm]]:
        now = self.loop.time()
        self.terms = [(i, t) for i, t in self.terms if i.alive and t.ended is None]
        return [(i, t) for i, t in self.terms if now < t.expiry]

    def check_single_spm(self, where: str) -> None:
        self.stats.checks += 1
        valid = self.valid_terms()
        if len(valid) > 1:
            names = ", ".join(f"{i.name} lver {t.lver} expiry {t.expiry:.3f}" for i, t in valid)
            self.fail(f"two SPMs with valid terms ({where}): {names}")

    def term_started(self, inc: Incarnation, term: SpmTerm) -> None:
        self.stats.terms += 1
        self.trace(f"{inc.name} SPM term lver {term.lver} gen {term.generation} "
                   f"expiry {term.expiry:.3f}")
        self.stats.checks += 1
        if self.cfg.priority(inc.host_id) == NEVER:
            self.fail(f"{inc.name} took the SPM role although its spm_priority is never")
        if term.lver <= self.max_lver:
            self.fail(f"{inc.name} acquired lver {term.lver} <= {self.max_lver} already held")
        self.max_lver = term.lver
        self.terms.append((inc, term))
        self.check_single_spm("term start")

    def check_change(
        self, inc: Incarnation, term: SpmTerm, volume: VolumeRef, old: int, new: int,
        *, reduce: bool = False,
    ) -> None:
        now = self.loop.time()
        self.stats.checks += 1
        if new != old:
            self.stats.changes += 1
            self.trace(f"{inc.name} {'reduce' if reduce else 'extend'} {volume} "
                       f"{old // MiB} -> {new // MiB} MiB lver {term.lver}")
        if term.ended is not None or now >= term.expiry:
            self.fail(f"{inc.name} changed {volume} under an invalid term lver {term.lver} "
                      f"(ended: {term.ended}, expiry {term.expiry:.3f}, now {now:.3f})")
        if term.lver != self.max_lver:
            self.fail(f"{inc.name} changed {volume} under lver {term.lver} while lver "
                      f"{self.max_lver} exists")
        self.check_single_spm("metadata change")
        if new < old and not reduce:
            self.fail(f"{volume} shrank {old} -> {new} by an extend")
        if new > old and reduce:
            self.fail(f"{volume} grew {old} -> {new} by a reduce")
        if new > self.volumes.caps[volume]:
            self.fail(f"{volume} extended to {new} past its cap {self.volumes.caps[volume]}")
        if new != old and (volume, new) not in self.asked:
            self.fail(f"{volume} extended to {new}, a size no request asked for")

    def watchdog_fire(self, inc: Incarnation, expiry: float) -> None:
        if inc.alive and inc.armed is not None and inc.armed <= expiry:
            self.stats.watchdog_kills += 1
            self.trace(f"{inc.name} watchdog reset (expiry {expiry:.3f})")
            inc.crash(self.rng_faults.uniform(1.0, 60.0))
            self.last_fault = self.loop.time()

    # ---- hosts -------------------------------------------------------------------------

    async def supervise(self, host_id: int) -> None:
        number = 0
        while True:
            number += 1
            inc = Incarnation(self, host_id, number)
            self.current[host_id] = inc
            if number > 1:  # a restart ends a fault: the bounds count from here
                self.last_fault = max(self.last_fault, self.loop.time())
            self.trace(f"{inc.name} start")
            with inc.scope:
                try:
                    await self.run_host(inc)
                except Exception as err:  # the process died on its own: systemd restarts it
                    self.stats.agent_exits += 1
                    self.trace(f"{inc.name} exited: {_leaf(err)}")
            if inc.alive:
                inc.alive = False
            await anyio.sleep(inc.restart_after)

    async def run_host(self, inc: Incarnation) -> None:
        h = inc.host_id
        cfg = self.cfg
        clock = SimClock(self.loop, inc)
        storage = HostStorage(self.disk, inc)
        rng = random.Random(self.rng_hosts.getrandbits(64))
        settings = LeaseSettings(
            path="sim", host_id=h, host_name=f"host{h}", sector_size=SECTOR,
            io_timeout_s=cfg.io_timeout, watchdog_fire_timeout_s=cfg.watchdog,
            max_hosts=self.max_hosts, spm_priority=cfg.priority(h),
        )
        lease = LeaseService(storage, settings, clock, watchdog=SimWatchdog(self, inc),
                             rng=random.Random(rng.getrandbits(64)), checks=self.checks)
        inc.lease = lease
        mailbox = HostMailbox(storage, self.layout, h, self.mailbox, clock,
                              random.Random(rng.getrandbits(64)), checks=self.checks)
        async with lease.joined(), anyio.create_task_group() as tg:
            inc.tg = tg
            record = lease.delta.record
            self.trace(f"{inc.name} joined gen {record.generation if record else None}")
            await tg.start(mailbox.run)
            publisher = InUsePublisher(storage, self.layout, h, self.reduces.in_use_of(inc),
                                       partial(_generation, lease), clock,
                                       wall_us=lambda: int(self.loop.time() * 1e6) + 1)
            inc.publisher = publisher
            await tg.start(publisher.run)
            self.trace(f"{inc.name} mailbox gen {mailbox.generation}")
            tg.start_soon(self.candidacy, inc, lease, storage, clock, rng)
            tg.start_soon(self.requester, inc, mailbox, clock, rng, tg)
            tg.start_soon(self.reduces.requester, inc, mailbox, clock,
                          random.Random(rng.getrandbits(64)))
            tg.start_soon(self.reduces.claimer, inc, publisher, clock,
                          random.Random(rng.getrandbits(64)))
            tg.start_soon(self.views.agent, inc, mailbox, clock, tg)

    async def candidacy(self, inc: Incarnation, lease: LeaseService, storage: HostStorage,
                        clock: SimClock, rng: random.Random) -> None:
        """As ``ClusterAgent._candidacy``, with the simulated volume backend."""
        while True:
            async with lease.spm() as term:
                self.term_started(inc, term)
                backend = SimVolumeBackend(self, inc, term, random.Random(rng.getrandbits(64)))
                server = SpmMailServer(
                    storage, backend, VGS, layout=self.layout, authority=term,
                    settings=self.mailbox, clock=clock, epoch=term.lver,
                    live_hosts=lambda: self.live_hosts(inc, lease),
                    reduce_checks=reduce_checks(self.cfg.mutation),
                    in_use=InUseGate(storage, self.layout, lease_states(lease.host_states),
                                     clock),
                )
                inc.server = server
                try:
                    await server.run()
                except NotSpmError as exc:
                    self.trace(f"{inc.name} SPM role ended: {exc}")
                finally:
                    inc.server = None
            self.trace(f"{inc.name} no longer SPM ({term.ended})")
            await clock.sleep(0)

    @staticmethod
    def live_hosts(inc: Incarnation, lease: LeaseService) -> set[int]:
        live = {h for h, s in lease.host_states().items()
                if s.state not in (HostState.FREE, HostState.DEAD)}
        live.add(inc.host_id)
        return live

    async def requester(self, inc: Incarnation, mailbox: HostMailbox, clock: SimClock,
                        rng: random.Random, tg: TaskGroup) -> None:
        mine = sorted(v for v, h in self.volumes.owner.items() if h == inc.host_id)
        while True:
            await clock.sleep(rng.expovariate(1.0 / self.cfg.request_gap_s))
            for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 5)):
                volume = rng.choice(mine)
                current = self.volumes.sizes[volume]
                roll = rng.random()
                if roll < 0.05:
                    size = self.volumes.caps[volume] + rng.randint(1, 8) * 256 * MiB
                elif roll < 0.15:
                    size = max(MiB, current - rng.randint(0, 4) * 64 * MiB)
                else:
                    size = min(self.volumes.caps[volume], current + rng.randint(1, 4) * 64 * MiB)
                tg.start_soon(self.one_request, inc, mailbox, clock, volume, size)

    async def one_request(self, inc: Incarnation, mailbox: HostMailbox, clock: SimClock,
                          volume: VolumeRef, size: int) -> None:
        self._next_req += 1
        rid = self._next_req
        started = clock.now()
        self.asked.add((volume, size))
        self.outstanding[rid] = (inc, volume, size, started)
        self.stats.requests += 1
        self.trace(f"{inc.name} req#{rid} {volume} {size // MiB} MiB")
        try:
            reply = await mailbox.request(volume, size)
        except MailboxTimeout:
            self.stats.timeouts += 1
            self.trace(f"{inc.name} req#{rid} timed out")
            if started >= self.last_fault + self.takeover_bound:
                self.fail(f"{inc.name} req#{rid} unanswered although faults stopped at "
                          f"{self.last_fault:.3f}")
            return
        except MailboxClosed:
            self.stats.closed += 1
            return
        finally:
            self.outstanding.pop(rid, None)
        self.stats.checks += 1
        truth = self.volumes.sizes[volume]
        self.trace(f"{inc.name} req#{rid} {reply.status.name} {reply.size // MiB} MiB "
                   f"(truth {truth // MiB})")
        if not inc.alive:
            return
        if reply.status is Status.OK:
            self.stats.answered += 1
            if truth < size or reply.size < size:
                self.fail(f"{inc.name} req#{rid} acted on a reply not meant for it: asked "
                          f"{volume} {size}, reply OK size {reply.size}, volume is {truth}")
        elif reply.status is Status.REJECTED and size > self.volumes.caps[volume]:
            self.stats.rejected += 1
        else:
            self.fail(f"{inc.name} req#{rid} acted on a reply not meant for it: asked "
                      f"{volume} {size}, got {reply.status.name} {reply.reason.name} "
                      f"{reply.text!r}")

    # ---- the run -----------------------------------------------------------------------

    async def sampler(self) -> None:
        """Checks that hold at every instant, sampled every few simulated seconds."""
        while True:
            await anyio.sleep(SAMPLE_S)
            self.check_single_spm("sample")
            now = self.loop.time()
            if now >= self.fault_end and now >= self.last_fault + self.takeover_bound:
                self.stats.checks += 1
                if not self.valid_terms():
                    self.fail(f"no SPM {self.takeover_bound:g}s after the last fault at "
                              f"{self.last_fault:.3f}")
            for rid, (inc, volume, size, started) in sorted(self.outstanding.items()):
                self.stats.checks += 1
                if inc.alive and now - max(started, self.last_fault) > self.answer_bound:
                    self.fail(f"{inc.name} req#{rid} {volume} {size} neither answered nor "
                              f"withdrawn after {now - started:.3f}s")

    async def main(self) -> None:
        await format_area(_RawStorage(self.disk), LeaseLayout(0, SECTOR, self.max_hosts),
                          self.cfg.io_timeout)
        end = self.run_end + self.takeover_bound + self.answer_bound + 60.0
        self.trace(f"world seed {self.cfg.seed} hosts {self.cfg.hosts} "
                   f"duration {self.cfg.duration:g} mutation {self.cfg.mutation}")
        self.stop.deadline = end
        self.loop.call_at(end - 0.001, lambda: self.trace("world end", last=True))
        with self.stop:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.sampler)
                if self.cfg.elections:
                    tg.start_soon(elections, self)
                else:
                    tg.start_soon(self.faults, tg)
                tg.start_soon(self.views.manager, tg)
                for h in range(1, self.cfg.hosts + 1):
                    tg.start_soon(self.supervise, h)
                    await anyio.sleep(self.rng_faults.uniform(0.0, 5.0))


def _generation(lease: LeaseService) -> int:
    record = lease.delta.record
    return record.generation if record is not None else 0


def _leaf(err: BaseException) -> str:
    """The first real error inside (nested) exception groups, with where it was raised."""
    while isinstance(err, BaseExceptionGroup) and err.exceptions:
        err = err.exceptions[0]
    tb = err.__traceback__
    where: list[str] = []
    while tb is not None:
        if "/autoextend/" in tb.tb_frame.f_code.co_filename:
            where.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return f"{type(err).__name__} in {' > '.join(where[-3:])}: {err}"


class _RawStorage:
    """Direct access to the disk, for formatting before any host starts."""

    def __init__(self, disk: SimDisk) -> None:
        self.disk = disk
        self.sector_size = disk.sector_size
        self.size = disk.size
        self.path = "sim-disk(raw)"

    async def read(self, offset: int, length: int) -> bytes:
        return bytes(self.disk.data[offset : offset + length])

    async def write(self, offset: int, data: bytes) -> None:
        self.disk.data[offset : offset + len(data)] = data

    async def close(self) -> None:
        return None


def mutant_checks(name: str | None) -> Checks:
    """The checks this world's hosts are built with: all on, or all but the one that the
    mutation ``name`` turns off (the mutation check: the world must then fail). Only this
    world's hosts get it; nothing process-wide changes."""
    if name is None:
        return ALL_ON
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r} (known: {', '.join(MUTATIONS)})")
    field = MUTATIONS[name]
    if field is None:  # not a Checks field: the server's reduce checks (sim/reduces.py)
        return ALL_ON
    return dataclasses.replace(ALL_ON, **{field: False})
