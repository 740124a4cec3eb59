"""Views in the simulation (issue 28): each host's own view of each guest volume, guests that
read and write through their host's view, and VMs that stop here and start there, migrate and
lose their host to a reboot.

- **Views.** A host's *view* of a volume is its device-mapper table: the size this host
  sees. The *metadata size* is the volume's size in the VG metadata
  (``SimVolumes.sizes``), which an extend through the SPM raises. A host's view grows only
  when that host refreshes it: after its own extension lands (never on the source of a live
  migration: the size is deferred), on an incoming migration before the destination arms,
  on a failed migration on the source, at VM start when the appearance check says so
  (``autoextend.monitor.viewcheck.judge_view``, the product's rule), or when the volume is
  first activated on the host. Views are kernel state: they survive a restart of the
  agent's process (the ``crash`` fault); a host *reboot* drops them (and kills its VMs). A
  stop deactivates the volume on its host only sometimes, so stale views stay around.
- **Guests.** Each VM's guest writes through its host's view, growing the volume's
  *written* mark (the highest offset any guest wrote, through any host; qcow2 clusters are
  allocated at the end). A write past the view's end fails (ENOSPC; the host is told, as by
  a block threshold event, and extends). The guest reads at boot, right after a migration's
  switchover and at every I/O step.
- **The invariant**: no guest ever reads through a view smaller than the written mark: the
  qcow2 metadata it reads points up to there, and a stale view returns zeros past its end.
- **Mutants**: ``view-check`` (``Checks(check_views=False)``): the starting host skips the
  appearance check and a VM starts on a stale view; ``protect-views``
  (``Checks(protect_views=False)``): the source refreshes during a migration and the
  destination arms without refreshing. Both must break the invariant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from autoextend.monitor.viewcheck import ViewAction, judge_view
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.host import HostMailbox
from autoextend.spm.wire import Status
from autoextend.volumes import VolumeRef

if TYPE_CHECKING:
    from sim.host import Incarnation, SimClock
    from sim.world import World

MiB = 1 << 20
GiB = 1 << 30
VMS_PER_HOST = 2
GUEST_GAP_S = 30.0        # mean simulated seconds between a guest's I/O steps
GROW_PROB = 0.5           # an I/O step also writes new clusters (else it only reads)
LOW_WATER = 512 * MiB     # free space in the view under which its host extends
EXTEND_STEP = GiB         # an extension asks for the view + this
SCAN_S = 60.0             # the agent's periodic look at its VMs' drives
ACTION_GAP_S = 600.0      # mean simulated seconds between lifecycle actions, per VM
MIGRATION_S = (5.0, 120.0)
MIGRATION_FAIL_PROB = 0.15
DEACTIVATE_PROB = 0.3     # a stop deactivates the volume on its host (drops the view)
REBOOT_PROB = 0.02        # per lifecycle action, while faults are on


@dataclass
class SimVm:
    name: str
    volume: VolumeRef
    host: int | None = None    # where its guest runs (the source, during a migration)
    dest: int | None = None    # the destination of the live migration under way
    busy: bool = False         # a start or a migration is under way
    run: int = 0               # one number per start or arrival: an extension made for an
                               # earlier run never refreshes the view for this one


@dataclass
class Agent:
    """One live incarnation of a host's agent, as the views see it."""

    inc: Incarnation
    mailbox: HostMailbox
    clock: SimClock
    tg: TaskGroup


class ViewTraffic:
    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.checks = world.checks
        self.vms: list[SimVm] = []
        self.written: dict[VolumeRef, int] = {}
        self.views: dict[int, dict[VolumeRef, int]] = {
            h: {} for h in range(1, world.cfg.hosts + 1)}
        self.boots: dict[int, int] = dict.fromkeys(self.views, 0)
        self.extending: set[tuple[int, VolumeRef]] = set()
        self.agents: dict[int, Agent] = {}
        for n in range(world.cfg.hosts * VMS_PER_HOST):
            vol = VolumeRef(("vg0", "vg1")[n % 2], f"vm{n}-disk")
            world.volumes.sizes[vol] = GiB
            world.volumes.caps[vol] = world.mailbox.max_request_bytes
            self.written[vol] = 256 * MiB  # the installed system
            self.vms.append(SimVm(f"vm{n}", vol))

    # ---- views and the invariant -------------------------------------------------------

    def refresh(self, host: int, volume: VolumeRef, why: str) -> None:
        """The host's view becomes the metadata size (``lvchange --refresh``)."""
        new = self.world.volumes.sizes[volume]
        old = self.views[host].get(volume)
        self.views[host][volume] = new
        if old != new:
            self.world.stats.view_refreshes += 1
            self.world.trace(f"h{host} view {volume} {_mib(old)} -> {new // MiB} MiB ({why})")

    def read(self, vm: SimVm, why: str) -> None:
        """The guest reads through its host's view: the invariant."""
        w = self.world
        if vm.host is None:
            return
        w.stats.guest_reads += 1
        w.stats.checks += 1
        view = self.views[vm.host].get(vm.volume, 0)
        written = self.written[vm.volume]
        if view < written:
            w.fail(f"guest {vm.name} read {vm.volume} on h{vm.host} ({why}) through a view of "
                   f"{view // MiB} MiB, but {written // MiB} MiB were written (metadata "
                   f"{w.volumes.sizes[vm.volume] // MiB} MiB): it reads zeros where data is")

    def write(self, vm: SimVm, length: int) -> None:
        """The guest allocates ``length`` more bytes at the end, through its host's view."""
        assert vm.host is not None
        view = self.views[vm.host].get(vm.volume, 0)
        end = self.written[vm.volume] + length
        if end > view:
            self.world.stats.write_failures += 1
            self.world.trace(f"guest {vm.name} ENOSPC on h{vm.host} {vm.volume} at "
                             f"{end // MiB} MiB > view {view // MiB} MiB")
        else:
            self.written[vm.volume] = end
        if view - min(end, view) < LOW_WATER:
            self.maybe_extend(vm.host, vm)  # the block threshold event (or the ENOSPC pause)

    # ---- the agent on each host --------------------------------------------------------

    def live_agent(self, host: int) -> Agent | None:
        agent = self.agents.get(host)
        return agent if agent is not None and agent.inc.alive else None

    async def agent(self, inc: Incarnation, mailbox: HostMailbox, clock: SimClock,
                    tg: TaskGroup) -> None:
        """The views part of one agent incarnation: its extensions, its periodic look."""
        h = inc.host_id
        agent = Agent(inc, mailbox, clock, tg)
        self.agents[h] = agent
        w = self.world
        for vm in self.vms:
            # Not modelled (the product's side): what the monitor's appearance check does
            # with the guests it finds already running when it starts. Counted: those on a
            # view below the metadata (an extension whose refresh died with the previous
            # incarnation), which judge_view(guest_has_run=True) would pause.
            view = self.views[h].get(vm.volume, 0)
            if vm.host == h and view < w.volumes.sizes[vm.volume]:
                w.stats.restart_behind += 1
                w.trace(f"{inc.name} finds {vm.name} running on view {view // MiB} MiB < "
                        f"metadata {w.volumes.sizes[vm.volume] // MiB} MiB")
        try:
            while True:
                for vm in self.vms:
                    if vm.host == h:
                        self.maybe_extend(h, vm)
                await clock.sleep(SCAN_S)
        finally:
            if self.agents.get(h) is agent:
                del self.agents[h]

    def maybe_extend(self, host: int, vm: SimVm) -> None:
        agent = self.live_agent(host)
        if agent is None or vm.host != host or (host, vm.volume) in self.extending:
            return
        view = self.views[host].get(vm.volume, 0)
        if view - self.written[vm.volume] >= LOW_WATER:
            return
        self.extending.add((host, vm.volume))
        agent.tg.start_soon(self._extend, agent, vm, vm.run, view + EXTEND_STEP)

    async def _extend(self, agent: Agent, vm: SimVm, run: int, size: int) -> None:
        inc = agent.inc
        h = inc.host_id
        try:
            await inc.gate()
            if not await self._request(agent, vm.volume, size):
                return
            if vm.run != run or vm.host != h:
                return  # that run of the guest is gone from here: nothing to refresh for
            if vm.dest is not None and self.checks.protect_views:
                self.world.stats.deferred += 1
                self.world.trace(f"{inc.name} {vm.name} migrating out: {vm.volume} "
                                 f"{size // MiB} MiB deferred (no refresh on the source)")
                return
            self.refresh(h, vm.volume, f"{vm.name} extended")
        finally:
            self.extending.discard((h, vm.volume))

    async def _request(self, agent: Agent, volume: VolumeRef, size: int) -> bool:
        """One extension through the mailbox and the real SPM; True when it is OK."""
        w = self.world
        inc = agent.inc
        w._next_req += 1
        rid = w._next_req
        started = agent.clock.now()
        w.asked.add((volume, size))
        w.outstanding[rid] = (inc, volume, size, started)
        w.stats.requests += 1
        w.stats.view_extends += 1
        w.trace(f"{inc.name} req#{rid} {volume} {size // MiB} MiB (guest)")
        try:
            reply = await agent.mailbox.request(volume, size)
        except MailboxTimeout:
            w.stats.timeouts += 1
            w.trace(f"{inc.name} req#{rid} timed out")
            if started >= w.last_fault + w.takeover_bound:
                w.fail(f"{inc.name} req#{rid} unanswered although faults stopped at "
                       f"{w.last_fault:.3f}")
            return False
        except MailboxClosed:
            w.stats.closed += 1
            return False
        finally:
            w.outstanding.pop(rid, None)
        if not inc.alive:
            return False
        w.stats.checks += 1
        truth = w.volumes.sizes[volume]
        w.trace(f"{inc.name} req#{rid} {reply.status.name} {reply.size // MiB} MiB "
                f"(truth {truth // MiB})")
        if reply.status is Status.OK and truth >= size and reply.size >= size:
            w.stats.answered += 1
            return True
        w.fail(f"{inc.name} req#{rid} acted on a reply not meant for it: asked {volume} "
               f"{size}, got {reply.status.name} size {reply.size}, volume is {truth}")
        return False

    # ---- guests ------------------------------------------------------------------------

    async def guest(self, vm: SimVm) -> None:
        rng = random.Random(self.rng.getrandbits(64))
        while True:
            await anyio.sleep(rng.expovariate(1.0 / GUEST_GAP_S))
            if vm.host is None:
                continue
            self.read(vm, "I/O")
            if rng.random() < GROW_PROB:
                self.write(vm, rng.randint(1, 8) * 16 * MiB)

    # ---- the cluster's VM lifecycle (the engine, libvirt, QEMU) ------------------------

    async def manager(self, tg: TaskGroup) -> None:
        w = self.world
        rng = self.rng
        for vm in self.vms:
            tg.start_soon(self.guest, vm)
        while True:
            await anyio.sleep(rng.expovariate(len(self.vms) / ACTION_GAP_S))
            if w.loop.time() < w.fault_end and rng.random() < REBOOT_PROB:
                self.reboot(rng.randint(1, w.cfg.hosts))
                continue
            vm = rng.choice(self.vms)
            if vm.busy:
                continue
            live = [h for h in sorted(self.views) if self.live_agent(h) is not None]
            if vm.host is None:
                if live:
                    self.start(vm, rng.choice(live))
                continue
            others = [h for h in live if h != vm.host]
            roll = rng.random()
            if roll < 0.45:
                self.stop(vm)
                if others and rng.random() < 0.7:  # the VM moves: it starts on another host
                    self.start(vm, rng.choice(others))
            elif roll < 0.85 and others:
                vm.busy = True
                tg.start_soon(self._migrate, vm, rng.choice(others))

    def stop(self, vm: SimVm) -> None:
        h = vm.host
        assert h is not None
        vm.host = None
        self.world.stats.vm_stops += 1
        if self.rng.random() < DEACTIVATE_PROB:
            self.views[h].pop(vm.volume, None)
            self.world.trace(f"{vm.name} stopped on h{h}, {vm.volume} deactivated")
        else:
            self.world.trace(f"{vm.name} stopped on h{h}, view {vm.volume} stays")

    def start(self, vm: SimVm, host: int) -> None:
        agent = self.live_agent(host)
        if agent is None:
            return
        vm.busy = True
        agent.tg.start_soon(self._start, vm, agent, self.rng.uniform(0.5, 5.0))

    async def _start(self, vm: SimVm, agent: Agent, delay: float) -> None:
        """The VM appears paused (prelaunch) on the agent's host; the agent checks its views,
        then the guest runs (and reads at once)."""
        inc = agent.inc
        h = inc.host_id
        w = self.world
        try:
            await anyio.sleep(delay)
            await inc.gate()
            if not inc.alive or vm.host is not None:
                return
            meta = w.volumes.sizes[vm.volume]
            view = self.views[h].get(vm.volume)
            if view is None:
                self.refresh(h, vm.volume, f"{vm.name} start: activated")
            elif not self.checks.check_views:
                w.trace(f"{inc.name} {vm.name} start: appearance check off (view "
                        f"{view // MiB} MiB, metadata {meta // MiB} MiB)")
            else:
                action = judge_view(view, meta, guest_has_run=False)
                w.stats.checks += 1
                if action is ViewAction.REFRESH:
                    w.stats.stale_starts += 1
                    self.refresh(h, vm.volume, f"{vm.name} start: appearance check")
                elif action is not ViewAction.OK:
                    w.fail(f"{inc.name} {vm.name} start: appearance check said {action.name} "
                           f"for a guest that has not run (view {view}, metadata {meta})")
            vm.host = h
            vm.run += 1
            w.stats.vm_starts += 1
            w.trace(f"{vm.name} started on h{h} (run {vm.run})")
            self.read(vm, "boot")
        finally:
            vm.busy = False

    async def _migrate(self, vm: SimVm, dest: int) -> None:
        w = self.world
        src = vm.host
        assert src is not None
        boot = self.boots[dest]
        try:
            agent = self.live_agent(dest)
            if agent is None:
                return
            vm.dest = dest
            w.trace(f"{vm.name} migration h{src} -> h{dest} starts")
            # The destination prepares the volume and refreshes its view before it arms.
            await agent.inc.gate()
            if not agent.inc.alive or vm.host != src:
                return
            if vm.volume not in self.views[dest]:
                self.refresh(dest, vm.volume, f"{vm.name} incoming: activated")
            elif self.checks.protect_views:
                self.refresh(dest, vm.volume, f"{vm.name} incoming: before arming")
            await anyio.sleep(self.rng.uniform(*MIGRATION_S))  # the guest runs on the source
            if vm.host != src:
                return  # the source rebooted: the guest is gone
            if self.boots[dest] != boot or self.rng.random() < MIGRATION_FAIL_PROB:
                w.stats.migrations_failed += 1
                vm.dest = None
                w.trace(f"{vm.name} migration h{src} -> h{dest} failed")
                if self.checks.protect_views and self.live_agent(src) is not None:
                    # The source refreshes after a failed migration (its deferred sizes).
                    self.refresh(src, vm.volume, f"{vm.name} migration failed")
                return
            vm.host, vm.dest = dest, None
            vm.run += 1
            w.stats.migrations += 1
            w.trace(f"{vm.name} migrated h{src} -> h{dest} (run {vm.run})")
            self.read(vm, "switchover")  # the guest runs on the destination at once
            if self.checks.protect_views and (agent := self.live_agent(dest)) is not None:
                agent.tg.start_soon(self._arrived, vm, agent, vm.run,
                                    self.rng.uniform(0.1, 5.0))
        finally:
            vm.busy = False
            if vm.dest == dest:
                vm.dest = None

    async def _arrived(self, vm: SimVm, agent: Agent, run: int, delay: float) -> None:
        """The destination's refresh when it sees the migration completed."""
        await agent.clock.sleep(delay)
        if agent.inc.alive and vm.run == run and vm.host == agent.inc.host_id:
            self.refresh(agent.inc.host_id, vm.volume, f"{vm.name} migration completed")

    def reboot(self, host: int) -> None:
        """The host reboots: its guests die, its views are gone, its agent restarts."""
        w = self.world
        inc = w.current.get(host)
        w._fault("reboot", f"h{host}")
        for vm in self.vms:
            if vm.host == host:
                vm.host = None
                vm.dest = None
                w.trace(f"{vm.name} killed by the reboot of h{host}")
        self.views[host].clear()
        self.boots[host] += 1
        if inc is not None and inc.alive:
            inc.crash(self.rng.uniform(30.0, 300.0))


def _mib(size: int | None) -> str:
    return "none" if size is None else f"{size // MiB}"
