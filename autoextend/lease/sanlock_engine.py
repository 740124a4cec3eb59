"""The sanlock lease engine: host ids in a sanlock lockspace, the SPM lease as a sanlock
resource, both held by the local sanlock daemon (through :mod:`sanlock_lib`).

    engine = SanlockEngine(settings, sector_size, clock)
    async with engine.joined():          # add_lockspace (or already there), watcher running
        async with engine.spm() as term: # acquire of the SPM resource on a registered socket
            term.check()                 # NotSpmError from the expiry on (no I/O)

Where: the lockspace at ``[lease] offset`` and the resource 1 MiB after it, in the lease area
on ``[lease] path`` (or at 0 and 1 MiB of ``[lease] sanlock_path``), each 1 MiB aligned.

The term is the resource's lease version (``lver``, from ``inquire`` after the acquire).
The daemon renews the host id; this process cannot see the renewal directly, so a watcher
asks the daemon every ``min(T/2, 1 s)``: ``get_hosts`` gives every host's state (the mailbox
live set) and this host's delta timestamp (the daemon's CLOCK_MONOTONIC seconds, the clock
``time.monotonic`` reads), ``inquire`` whether the registered socket still holds the SPM
resource. The term's expiry is that timestamp + 8T: the daemon starts its own recovery
(killing the lease holder, then the watchdog) 8T after its last successful renewal, and
``get_hosts`` reports a timestamp up to one renewal older than that, so the SPM scope is
cancelled and the resource released before the daemon would have to kill us, and well
before any other host may take over (8T + W after it last saw a renewal). A daemon that
stops answering, a lockspace that disappears or a resource no longer held ends the term at
once.

SPM priority: sanlock has no priority and this engine publishes none, so ``[lease]
spm_priority`` may only be "never" (``spm()`` never asks the daemon for the resource; the host
still joins the lockspace and uses the mailbox) or the default (contend as always).

If this process dies (SIGKILL included), the daemon releases its resources: another host
takes over within one acquire poll. If the whole host dies, takeover waits for sanlock's
host_dead, 8T + W (140..210 s at sanlock's defaults).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio

from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock
from autoextend.errors import AutoextendError, StartupError
from autoextend.lease import sanlock_lib as sl
from autoextend.lease.config import LeaseSettings
from autoextend.lease.errors import LeaseError
from autoextend.lease.layout import MIB
from autoextend.lease.liveness import HostState, HostStatus
from autoextend.lease.priority import DEFAULT_PRIORITY, NEVER, Priority, parse_priority
from autoextend.lease.term import Term, TermHolder
from autoextend.lease.timeouts import LeaseTimeouts, lease_timeouts
from autoextend.logs import Repeats, get_logger

RESOURCE_NAME = "SPM"
_T = TypeVar("_T")

_STATES = {sl.HOST_UNKNOWN: HostState.UNKNOWN, sl.HOST_FREE: HostState.FREE,
           sl.HOST_LIVE: HostState.LIVE, sl.HOST_FAIL: HostState.FAIL,
           sl.HOST_DEAD: HostState.DEAD}


def sanlock_location(settings: LeaseSettings) -> tuple[str, int, int]:
    """(path, lockspace offset, resource offset) of the engine's leases."""
    if settings.sanlock_path:
        return settings.sanlock_path, 0, MIB
    return settings.path, settings.offset, settings.offset + MIB


def host_state(flag: int) -> HostState:
    return _STATES.get(flag, HostState.UNKNOWN)


class SanlockTerm(Term):
    """One tenure as SPM: the SPM resource at version ``lver``."""

    def __init__(self, engine: SanlockEngine, lver: int) -> None:
        super().__init__(engine.host_id, lver, lambda: engine.expiry, engine.clock,
                         engine.checks)


class SanlockEngine(TermHolder[SanlockTerm]):
    def __init__(self, settings: LeaseSettings, sector_size: int, clock: Clock,
                 checks: Checks = ALL_ON) -> None:
        if settings.host_id < 1:
            raise LeaseError("lease.host_id is not configured (1..max_hosts)")
        self.settings = settings
        self.checks = checks  # its terms get checks.term_check (see autoextend/checks.py)
        self._host_id = settings.host_id
        self._host_name = settings.host_name or socket.gethostname()
        self.clock = clock
        self._timeouts = lease_timeouts(settings.io_timeout_s, settings.watchdog_fire_timeout_s,
                                        settings.acquire_poll_s)
        self.io_timeout = int(settings.io_timeout_s)
        self.lockspace_name = settings.sanlock_lockspace
        path, ls_offset, res_offset = sanlock_location(settings)
        self.path = path
        self._ls = sl.lockspace(self.lockspace_name, self._host_id, path, ls_offset, sector_size)
        self._res = sl.resource(self.lockspace_name, RESOURCE_NAME, path, res_offset,
                                sector_size)
        self._key = f"{self.lockspace_name}:{RESOURCE_NAME}"
        self.poll = min(self._timeouts.io_timeout / 2, 1.0)
        self.expiry = 0.0          # our clock: from here on the lease may be lost
        self._sock: int | None = None
        self._sock_lock: anyio.Lock | None = None
        self._joined = anyio.Event()
        self._term: SanlockTerm | None = None
        self._hold_off_until = 0.0
        self.spm_priority: Priority = settings.spm_priority
        self._priority_changed = anyio.Event()
        self._hosts: dict[int, sl.HostInfo] = {}
        self._changed: dict[int, tuple[int, float]] = {}  # host -> (timestamp, seen at)
        self._leader: tuple[int, int] | None = None
        self._own_ts: int | None = None
        self.log = get_logger("lease", host_id=self._host_id, engine="sanlock")
        self.repeats = Repeats(self.log, self.clock.now)  # retried failures: once, then a count

    # ---- LeaseEngine properties -------------------------------------------------------------

    @property
    def host_id(self) -> int:
        return self._host_id

    @property
    def host_name(self) -> str:
        return self._host_name

    @property
    def timeouts(self) -> LeaseTimeouts:
        return self._timeouts

    @property
    def record_errors(self) -> int:
        return 0

    # ---- calls into libsanlock (worker threads) --------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    def _sock_guard(self) -> anyio.Lock:
        if self._sock_lock is None:  # made in the event loop, not in __init__
            self._sock_lock = anyio.Lock()
        return self._sock_lock

    async def _on_sock(self, fn: Callable[..., _T], *args: object) -> _T:
        """A call on the registered socket (libsanlock wants those serialised)."""
        async with self._sock_guard():
            if self._sock is None:
                raise LeaseError("not registered with the sanlock daemon")
            return await anyio.to_thread.run_sync(fn, self._sock, *args)

    # ---- host id ----------------------------------------------------------------------------

    @asynccontextmanager
    async def joined(self) -> AsyncIterator[SanlockEngine]:
        """Register with the daemon and join the lockspace (or find it joined: a restart of
        this process after a crash), and watch the daemon while the body runs."""
        await self._join()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if self._term is not None:
                self._term.end("leaving")
            with anyio.CancelScope(shield=True), anyio.move_on_after(
                    4 * self._timeouts.io_timeout):
                try:
                    await self._call(sl.rem_lockspace, self._ls)
                except sl.SanlockError as err:
                    self.log.warning("sanlock rem_lockspace failed", error=str(err))
            self._close_sock()
            self._joined = anyio.Event()

    def _close_sock(self) -> None:
        if self._sock is not None:
            os.close(self._sock)
            self._sock = None

    async def _join(self) -> None:
        started = self.clock.now()
        mono = time.monotonic()
        try:
            rv = await self._call(lambda: sl.add_lockspace(self._ls, self.io_timeout,
                                                           wait=True))
        except sl.SanlockError as err:
            if err.rv in (-errno.ENOENT, -errno.ECONNREFUSED):
                run_dir = os.environ.get("SANLOCK_RUN_DIR", "/run/sanlock")
                raise StartupError("lease.engine sanlock",
                                   f"no sanlock daemon answers on {run_dir}/sanlock.sock "
                                   "(start it: systemctl start sanlock)") from None
            raise StartupError(f"sanlock lockspace {self.lockspace_name!r} on {self.path}",
                               str(err)) from None
        if rv == 0:
            # The delta lease was written after the call started: a lower bound.
            self._own_ts = int(mono)
            self.expiry = started + 8 * self._timeouts.io_timeout
        else:  # -EEXIST (joined before this process started) or -EINPROGRESS
            while (await self._call(sl.inq_lockspace, self._ls)) != 0:
                await self.clock.sleep(self.poll)
            while not await self._refresh_hosts():
                await self.clock.sleep(self.poll)
        if self._sock is None:
            self._sock = await self._call(sl.register)
        self._joined.set()
        self.log.info("joined the sanlock lockspace", lockspace=self.lockspace_name,
                      path=self.path, already=rv != 0)

    async def _refresh_hosts(self) -> bool:
        """Ask the daemon for every host's state; True once it reported this host."""
        hosts = await self._call(sl.get_hosts, self.lockspace_name, 0)
        now = self.clock.now()
        for info in hosts:
            seen = self._changed.get(info.host_id)
            if seen is None or seen[0] != info.timestamp:
                self._changed[info.host_id] = (info.timestamp, now)
        self._hosts = {h.host_id: h for h in hosts}
        own = self._hosts.get(self._host_id)
        if own is None or not own.timestamp:
            return False
        if self._own_ts is None or own.timestamp > self._own_ts:
            self._own_ts = own.timestamp
        offset = self.clock.now() - time.monotonic()
        self.expiry = max(self.expiry, self._own_ts + 8 * self._timeouts.io_timeout + offset)
        return True

    async def _watch(self) -> None:
        """Every poll: the hosts, our renewal, and (as SPM) that the resource is still ours;
        after a loss, a new join (every host, whatever its SPM priority: a "never" host still
        needs the lockspace for the mailbox's live set)."""
        while True:
            await self.clock.sleep(self.poll)
            if not self._joined.is_set():
                await self._rejoin()
                continue
            try:
                if await self._call(sl.inq_lockspace, self._ls) != 0:
                    self._lost("the lockspace is gone from the sanlock daemon")
                    continue
                await self._refresh_hosts()
                term = self._term
                if term is not None and term.ended is None:
                    held = await self._on_sock(sl.inquire)
                    if held.get(self._key) != term.lver:
                        self._end_term(term, "the sanlock daemon no longer holds the SPM "
                                             f"resource (holds {held})")
            except (sl.SanlockError, LeaseError, OSError) as err:
                self._lost(f"sanlock daemon: {err}")

    def _lost(self, reason: str) -> None:
        if self._joined.is_set():
            self.log.error("host id lost", reason=reason)
            # A new Event only here: _acquire may be waiting on the unset one, which the
            # next _join sets.
            self._joined = anyio.Event()
        if self._term is not None:
            self._end_term(self._term, f"host id lost: {reason}")

    def _end_term(self, term: SanlockTerm, reason: str) -> None:
        if term.ended is None:
            self.log.error("SPM term fenced", lver=term.lver, reason=reason)
        term.end(reason)

    # ---- SPM --------------------------------------------------------------------------------

    async def _rejoin(self) -> None:
        """After a loss (the watcher): once no term is left (its scope ends it and releases),
        join again, a new generation. A failure is logged once and retried every acquire
        poll."""
        if self._term is not None:
            return
        async with self._sock_guard():  # not under a call on it (an acquire in progress)
            self._close_sock()
        try:
            await self._join()
        except (AutoextendError, OSError, sl.SanlockError) as err:
            self.repeats.warning("sanlock rejoin failed", error=str(err))
            await self.clock.sleep(self._timeouts.acquire_poll)
            return
        self.repeats.clear("sanlock rejoin failed")

    async def _acquire(self) -> int:
        while True:
            await self._joined.wait()  # the watcher joins again after a loss
            await self.clock.sleep(self._hold_off_until - self.clock.now())
            if self.spm_priority == NEVER:  # never contends: wait for a reload to change it
                await self._priority_changed.wait()
                continue
            if self.clock.now() >= self.expiry:
                await self.clock.sleep(self.poll)
                continue
            try:
                await self._on_sock(sl.acquire, self._res)
            except sl.SanlockError as err:
                if not err.busy:
                    self.repeats.warning("sanlock acquire failed", error=str(err))
                await self._read_leader()
                await self.clock.sleep(self._timeouts.acquire_poll)
                continue
            self.repeats.clear("sanlock acquire failed")
            held = await self._on_sock(sl.inquire)
            lver = held.get(self._key)
            if lver is None:
                continue
            return lver

    async def _read_leader(self) -> None:
        try:
            owner = await self._call(sl.read_resource_owner, self._res)
        except sl.SanlockError:
            return
        self._leader = owner

    async def _release(self, lver: int) -> None:
        with anyio.move_on_after(4 * self._timeouts.io_timeout):
            try:
                await self._on_sock(sl.release, self._res)
            except (sl.SanlockError, LeaseError) as err:
                self.log.warning("sanlock release failed", lver=lver, error=str(err))

    # TermHolder hooks: spm(), step_down() and term are in autoextend.lease.term.

    async def _start_term(self) -> SanlockTerm:
        lver = await self._acquire()
        term = SanlockTerm(self, lver)
        self._term = term
        self._leader = (self._host_id, lver)
        return term

    async def _finish_term(self, term: SanlockTerm) -> None:
        # Release before clearing _term: _rejoin waits for _term to be None and then closes
        # the registered socket the release must go out on.
        await self._release(term.lver)
        self._term = None

    def _fence_at_expiry(self, term: SanlockTerm) -> None:
        self._end_term(term, "lease may have expired (renewal not seen in time)")

    def _default_hold_off(self) -> float:
        return 2 * self._timeouts.renewal_interval

    def set_spm_priority(self, value: object) -> None:
        """Apply a new ``spm_priority`` (a reload): "never" or the default only (sanlock has
        no priority); a term in progress is kept. ValueError otherwise."""
        priority = parse_priority(value)
        if priority not in (NEVER, DEFAULT_PRIORITY):
            raise ValueError(f"spm_priority {priority} needs the native engine (sanlock has "
                             "no priority)")
        if priority == self.spm_priority:
            return
        self.log.info("SPM priority changed", old=self.spm_priority, new=priority)
        self.spm_priority = priority
        self._priority_changed.set()
        self._priority_changed = anyio.Event()

    # ---- status ------------------------------------------------------------------------------

    async def read_spm(self) -> tuple[int, int] | None:
        """The resource's owner as the daemon reads it now (``read_resource_owner``; a
        failed read raises SanlockError)."""
        return await self._call(sl.read_resource_owner, self._res)

    def current_spm(self) -> tuple[int, int] | None:
        if self.term is not None:
            return self._host_id, self.term.lver
        return self._leader

    def host_states(self) -> dict[int, HostStatus]:
        now = self.clock.now()
        out = {}
        for host_id, info in sorted(self._hosts.items()):
            seen = self._changed.get(host_id)
            out[host_id] = HostStatus(host_id, host_state(info.state), "", info.generation,
                                      now - seen[1] if seen else 0.0)
        return out

    @property
    def held(self) -> bool:
        return self._joined.is_set() and self.clock.now() < self.expiry

    def renewal_age(self) -> float | None:
        """Seconds since the renewal the daemon last reported (it reports one renewal late)."""
        if not self._joined.is_set() or self._own_ts is None:
            return None
        return max(0.0, time.monotonic() - self._own_ts)
