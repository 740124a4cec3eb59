"""The chaos soak: real hosts, SPM, storage and guests failing at random, with nothing lost.

:func:`soak` starts a multi-host lab (``lab/multihost.py``: ``autoextend run`` processes in
mailbox mode, each with its own loop views, one shared lease and mailbox area), boots TCG
guests that write the verifiable pattern at their own rates, and runs a seeded fault
schedule (``chaos_plan.py``) against them. A supervisor restarts any host process that
exits outside a fault, as systemd would, and counts it. After the schedule it lets every
guest finish and checks the invariants:

- every guest's data verifies (the guest compares what it reads back with the pattern);
- ``qemu-img check`` of every volume is clean;
- no guest is left paused once the faults have healed (a guest that never finishes its
  writes is one);
- no volume grew more than its writes need plus two chunks;
- never two SPM writers in one term, and no change under a stale term (the SPMs' logs);
- no traceback in any log;
- every host ends running, with every VM it runs watched.

Every second guest (chaos1, chaos3, ...) runs on a fault volume (``lab/faultvol.py``): its
data path goes through a fault file system, for the ``guest-eio`` fault, and its drive has
``werror=stop,rerror=stop`` (a production thin disk's policy), so that an EIO pauses it.
How much each guest writes is capped (``max_mib``): a long soak scales the write rates
down, and the chunk with them, so that the fastest guest still needs several extensions a
minute (``chaos_plan.rate_scale``, ``soak_chunk_mib``).

The result is a :class:`SoakReport`; ``bench/chaos.py`` writes it as JSON and one page of
Markdown, with the line that replays the run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from qemu.qmp import QMPError

from autoextend.errors import AutoextendError
from autoextend.lab import chaos_plan as plan
from autoextend.lab.errors import VmError
from autoextend.lab.faultfs import FaultFs, fault_fs
from autoextend.lab.faultvol import FaultVolume, create_fault_volume
from autoextend.lab.guest import GuestJob, GuestResult, Mode, kernel_crash, last_progress
from autoextend.lab.migrate import (
    has_late_block_activate,
    node_length,
    prepare_direct,
    start_destination,
    start_migration,
    switch_over,
)
from autoextend.lab.multihost import VG, HostProcess, Pool, PoolGuest, pool
from autoextend.lab.qemu import QemuVm
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.logs import get_logger
from autoextend.lvm import loopdev
from autoextend.lvm.loop_backend import vg_used
from autoextend.volumes import VolumeRef

log = get_logger("lab.chaos")

MiB = 1 << 20
EXTENT = 4 * MiB
SETTLE_S = 90.0  # after the schedule: how long every host has to be up and watching
STALL_S = 180.0  # a guest past its finish time whose progress stands still this long
FINISH_LATE_FACTOR = 3.0  # a guest still moving gets at most this many finish timeouts
READ_BACK_TIMEOUT_S = 900.0  # a second boot that reads back a crashed guest's writes
MIGRATION_BPS = 8 * MiB  # slow enough that the hold decides when it ends
# A destination's prepare that fails (its metadata path under a fault, 5-30 s) is tried
# again this often, for this long, before the guest is declared left paused there.
PREPARE_EVERY_S = 2.0
PREPARE_RETRY_S = 120.0
RESUME_WAIT_S = 90.0  # after a guest-eio heal: how long the fault waits for the guest to run
MAX_MIB = 1024  # what one guest writes at most (SoakConfig.max_mib)
METADATA = "metadata"  # the metadata area's file name (lab/multihost.py)


@dataclass(frozen=True)
class SoakConfig:
    seed: int
    duration_s: float = 600.0
    hosts: int = 3
    guests: int = 4
    chunk_mib: int = 16
    start_mib: int = 32
    rates_mib_s: tuple[float, float] = (0.5, 2.0)  # before the scale (plan.rate_scale)
    max_mib: int = MAX_MIB
    timing: plan.Timing = plan.Timing()
    kinds: tuple[str, ...] = plan.FAULT_KINDS
    # Checks fields the hosts run with off (``sim/mutant_service.py``): the mutation check.
    mutant: tuple[str, ...] = ()
    directory: Path | None = None

    @property
    def scale(self) -> float:
        return plan.rate_scale(self.rates_mib_s, self.duration_s, self.max_mib)

    @property
    def soak_chunk_mib(self) -> int:
        """The chunk the hosts run with (``chunk_mib``, smaller when the rates are scaled)."""
        return plan.soak_chunk_mib(self.rates_mib_s[1] * self.scale, self.chunk_mib,
                                   EXTENT // MiB)

    @property
    def fault_volumes(self) -> bool:
        """Whether every second guest runs on a fault volume (for ``guest-eio``)."""
        return "guest-eio" in self.kinds

    def replay(self) -> str:
        args = [f"--seed {self.seed}", f"--duration {self.duration_s:g}",
                f"--hosts {self.hosts}", f"--guests {self.guests}"]
        if self.max_mib != MAX_MIB:
            args.append(f"--max-mib {self.max_mib}")
        if self.mutant:
            args.append(f"--mutant {','.join(self.mutant)}")
        if set(self.kinds) != set(plan.FAULT_KINDS):
            args.append(f"--kinds {','.join(self.kinds)}")
        return "python -m bench.chaos " + " ".join(args)


@dataclass
class FaultRecord:
    kind: str
    target: str
    start_s: float
    end_s: float = 0.0
    detail: str = ""


#: A source host that answers its status for this long during a migration of its VM and
#: never says the VM migrates out missed it (it learns from QEMU's events within a second).
MISSED_AFTER_S = 8.0


@dataclass
class SourceWatch:
    """What the source host's service said during a migration's hold."""

    known_view: int | None = None  # the source's view when its service first said so
    first_s: float | None = None   # first and last answer with the VM listed, not migrating
    last_s: float | None = None

    def answered(self, now: float, entry: dict[str, Any] | None) -> None:
        if entry is None or self.known_view is not None:
            return
        if entry.get("migration") != "migrating-out":
            self.first_s = now if self.first_s is None else self.first_s
            self.last_s = now

    def violations(self, vm: str, host_id: int, view_now: int) -> list[str]:
        """The source's own rule (``monitor/migration.py``): once it knows of the
        migration out, it never refreshes its view; and it does come to know."""
        if self.known_view is not None:
            if view_now > self.known_view:
                return [f"host {host_id} refreshed {vm}'s view from {self.known_view} to "
                        f"{view_now} bytes during its migration out, after saying so"]
            return []
        if (self.first_s is not None and self.last_s is not None
                and self.last_s - self.first_s >= MISSED_AFTER_S):
            return [f"host {host_id} answered for {self.last_s - self.first_s:.1f} s of "
                    f"{vm}'s migration out and never said it migrates out"]
        return []


@dataclass
class SoakReport:
    config: dict[str, Any]
    replay: str
    faults: list[FaultRecord] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    guests: dict[str, dict[str, Any]] = field(default_factory=dict)
    pauses: list[dict[str, Any]] = field(default_factory=list)
    extensions: dict[str, Any] = field(default_factory=dict)
    # guests that wrote slower than planned but kept moving: name -> MiB written when the
    # first wait ran out (the lab's pace, not a violation)
    late_guests: dict[str, int] = field(default_factory=dict)
    # guests whose kernel crashed: name -> the crash, the MiB written by its last progress
    # report, and whether a second boot read them back intact (Soak.read_back)
    guest_crashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


@dataclass
class _Guest:
    name: str
    job: GuestJob
    guest: PoolGuest
    migrating: bool = False
    result: GuestResult | None = None
    fault: FaultVolume | None = None  # its volume's data path can fail (guest-eio)
    # Its QEMU arrived by migration and has not run since: its nodes are still inactive
    # (late-block-activate), and QEMU 7.2 aborts when such a QEMU migrates out
    # (block.c bdrv_inactivate_recurse assertion; seen in the one-hour soak of stop 40).
    inactive: bool = False


def guest_folders(vms: Path, name: str) -> list[Path]:
    """The folders of guest ``name``'s QEMUs under ``vms``, oldest first: its first boot
    (``NAME``) and each QEMU a migration started (``NAME-FAULT-HOST``), not a read-back
    boot (``NAME-readback``)."""
    folders = [d for d in vms.glob(f"{name}*") if d.name == name
               or (d.name.startswith(f"{name}-") and not d.name.endswith("-readback"))]
    return sorted(folders, key=lambda d: d.stat().st_mtime)


def written_by_progress(vms: Path, name: str) -> int:
    """The MiB guest ``name`` reported written, by its last progress line in any of its
    QEMUs' serial logs (blocking; 0 before the first). Each report follows a completed
    ``O_DIRECT`` write, so those MiB are on the volume."""
    found = 0
    for folder in guest_folders(vms, name):
        serial = folder / "serial.log"
        if serial.exists():
            found = max(found, last_progress(serial.read_text(errors="replace")) or 0)
    return found


def first_kernel_crash(vms: Path, name: str) -> str | None:
    """The first kernel crash line in any of guest ``name``'s QEMUs' serial logs under
    ``vms`` (blocking), with that QEMU's folder (``NAME-FAULT-HOST``: the fault, a
    migration, it arrived by). A guest keeps being migrated after its kernel crashed, so
    the crash is often in an earlier QEMU's log."""
    for folder in guest_folders(vms, name):
        serial = folder / "serial.log"
        crash = kernel_crash(serial.read_text(errors="replace")) if serial.exists() else None
        if crash is not None:
            return f"{crash} (QEMU {folder.name})"
    return None


class Soak:
    """One soak run on a started pool."""

    def __init__(self, cfg: SoakConfig, p: Pool, paths: dict[int, FaultFs],
                 volfs: FaultFs | None = None) -> None:
        self.cfg = cfg
        self.pool = p
        self.paths = paths  # each host's path to the metadata area (a fault fs mount)
        self.volfs = volfs  # where the fault volumes' data is
        self.rng = random.Random(cfg.seed ^ 0x5EED)
        self.report = SoakReport(config=_config_json(cfg), replay=cfg.replay())
        self.guests: dict[str, _Guest] = {}
        self.held_down: set[int] = set()  # hosts a fault keeps down or stopped
        self._tool_configs: dict[int, Path] = {}  # hosts whose config a fault broke
        # One config fault per host at a time (the two lanes): a reload that read a file
        # another lane had broken wrote it back broken, and a broken file's "last good"
        # copy was the broken one, which a migration's prepare then failed on.
        self._config_locks: dict[int, anyio.Lock] = {}
        self.t0 = 0.0  # the schedule's start (anyio clock)
        self.wall0 = 0.0  # the same instant, wall clock (log timestamps)

    def now(self) -> float:
        return round(anyio.current_time() - self.t0, 3)

    # ------------------------------------------------------------------ setup

    async def start_guests(self) -> None:
        hosts = sorted(self.pool.hosts)
        cfg = self.cfg
        for i in range(cfg.guests):
            rate = self.rng.uniform(*cfg.rates_mib_s) * cfg.scale
            mib = plan.guest_mib(rate, cfg.duration_s, cfg.soak_chunk_mib, cfg.max_mib)
            job = GuestJob(mib=mib, rate_kib_s=max(1, int(rate * 1024)), seed=100 + i)
            name = f"chaos{i}"
            host = hosts[i % len(hosts)]
            virtual_mib = max(1024, 2 * mib)
            fault: FaultVolume | None = None
            if self.volfs is not None and i % 2 == 1:
                fault, guest = await self._start_on_fault_volume(host, name, job, virtual_mib)
            else:
                guest = await self.pool.start_guest(host, name, job, start_mib=cfg.start_mib,
                                                    virtual_mib=virtual_mib)
            self.guests[name] = _Guest(name, job, guest, fault=fault)

    async def _start_on_fault_volume(self, host: int, name: str, job: GuestJob,
                                     virtual_mib: int) -> tuple[FaultVolume, PoolGuest]:
        assert self.volfs is not None
        p = self.pool
        fault = await create_fault_volume(p.volumes, self.volfs, p.stack,
                                          VolumeRef(VG, f"{name}-disk"),
                                          self.cfg.start_mib * MiB)
        device = await p.host_volumes(host).attach(fault.volume)
        await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", device,
                                 f"{virtual_mib}M"])
        guest = await p.launch_guest(host, name, job, fault.volume, device,
                                     werror="stop", rerror="stop")
        return fault, guest

    # ------------------------------------------------------------------ supervision

    async def supervise(self) -> None:
        """Restart a host process that exited while no fault holds it down (systemd's
        ``Restart=on-failure``); each such exit is reported."""
        while True:
            await anyio.sleep(0.5)  # time is the subject: a supervisor's poll
            for host_id, host in self.pool.hosts.items():
                proc = host.process
                if host_id in self.held_down or proc is None or proc.returncode is None:
                    continue
                self.report.unexpected_exits.append(
                    f"host {host_id} exited ({proc.returncode}) at {self.now()} s")
                log.warning("host exited outside a fault; restarting", host_id=host_id,
                            rc=proc.returncode)
                await self._start(host)

    async def _start(self, host: HostProcess) -> None:
        for attempt in range(5):
            try:
                await host.start()
                return
            except AutoextendError as err:
                log.warning("host restart failed", host_id=host.host_id, error=str(err),
                            attempt=attempt)
                await anyio.sleep(1.0)  # time is the subject: a restart back-off
        self.report.violations.append(f"host {host.host_id} does not start again")

    # ------------------------------------------------------------------ faults

    async def run_lane(self, faults: list[plan.Fault]) -> None:
        for fault in faults:
            await anyio.sleep_until(self.t0 + fault.at_s)
            record = FaultRecord(fault.kind, "", self.now())
            self.report.faults.append(record)
            log.info("fault", kind=fault.kind, hold_s=fault.hold_s)
            try:
                await getattr(self, "_" + fault.kind.replace("-", "_"))(fault, record)
            except (AutoextendError, OSError) as err:
                record.detail = f"not applied: {err}"
            record.end_s = self.now()

    async def _spm(self) -> int | None:
        return await self.pool.spm_host()

    async def _kill_host(self, fault: plan.Fault, record: FaultRecord) -> None:
        host = self.pool.hosts[sorted(self.pool.hosts)[fault.pick % len(self.pool.hosts)]]
        await self._down(host, fault.hold_s, record)

    async def _kill_spm(self, fault: plan.Fault, record: FaultRecord) -> None:
        spm = await self._spm()
        if spm is None:
            record.detail = "no SPM to kill"
            return
        await self._down(self.pool.hosts[spm], fault.hold_s, record)

    async def _down(self, host: HostProcess, hold_s: float, record: FaultRecord) -> None:
        record.target = f"host {host.host_id}"
        self.held_down.add(host.host_id)
        try:
            await host.kill()
            await anyio.sleep(hold_s)  # time is the subject: the host stays dead
            await self._start(host)
        finally:
            self.held_down.discard(host.host_id)

    async def _stop_spm(self, fault: plan.Fault, record: FaultRecord) -> None:
        spm = await self._spm()
        if spm is None:
            record.detail = "no SPM to stop"
            return
        host = self.pool.hosts[spm]
        record.target = f"host {spm}"
        proc = host.process
        if proc is None or proc.returncode is not None:
            record.detail = "not running"
            return
        self.held_down.add(spm)
        try:
            proc.send_signal(signal.SIGSTOP)
            await anyio.sleep(fault.hold_s)  # time is the subject: a frozen holder
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
            self.held_down.discard(spm)

    async def _step_down(self, fault: plan.Fault, record: FaultRecord) -> None:
        spm = await self._spm()
        if spm is None:
            record.detail = "no SPM"
            return
        record.target = f"host {spm}"
        cli = [sys.executable, "-m", "autoextend", "--config", str(self._tool_config(spm)),
               "spm", "step-down"]
        done = await anyio.run_process(cli, check=False)
        record.detail = f"exit {done.returncode}"
        await anyio.sleep(fault.hold_s)  # time is the subject: the next fault waits

    def _config_lock(self, host: HostProcess) -> anyio.Lock:
        return self._config_locks.setdefault(host.host_id, anyio.Lock())

    async def _reload(self, fault: plan.Fault, record: FaultRecord) -> None:
        host = self._pick_host(fault)
        record.target = f"host {host.host_id}"
        async with self._config_lock(host):
            text = host.config.read_text()
            changed = text.replace("poll_interval_s = 1.0", "poll_interval_s = 0.9")
            if changed == text:
                changed = text.replace("poll_interval_s = 0.9", "poll_interval_s = 1.0")
            host.config.write_text(changed)
            self._hup(host)
            await anyio.sleep(fault.hold_s)  # time is the subject: the next fault waits

    async def _reload_broken(self, fault: plan.Fault, record: FaultRecord) -> None:
        host = self._pick_host(fault)
        record.target = f"host {host.host_id}"
        async with self._config_lock(host):
            good = host.config.read_text()
            # The operator's tools (a migration's ``volume prepare``, ``spm step-down``) run
            # meanwhile with the last good file, as an operator who knows the file is broken
            # would: a broken file is refused by every command (tests/cli), not a finding.
            last_good = host.config.with_name("autoextend.last-good.toml")
            last_good.write_text(good)
            self._tool_configs[host.host_id] = last_good
            try:
                host.config.write_text(good + "\n[policy\nchunk_mib = -3\n")
                self._hup(host)
                await anyio.sleep(fault.hold_s)  # time is the subject: the broken file stays
            finally:
                host.config.write_text(good)
                self._hup(host)
                self._tool_configs.pop(host.host_id, None)

    def _tool_config(self, host_id: int) -> Path:
        """The config file an operator's command on ``host_id`` runs with (see above)."""
        return self._tool_configs.get(host_id, self.pool.hosts[host_id].config)

    def _pick_host(self, fault: plan.Fault) -> HostProcess:
        return self.pool.hosts[sorted(self.pool.hosts)[fault.pick % len(self.pool.hosts)]]

    @staticmethod
    def _hup(host: HostProcess) -> None:
        if host.process is not None and host.process.returncode is None:
            host.process.send_signal(signal.SIGHUP)

    async def _vg_full(self, fault: plan.Fault, record: FaultRecord) -> None:
        root = str(self.pool.directory / "volumes" / VG)
        used = await anyio.to_thread.run_sync(vg_used, root)
        record.target = VG
        record.detail = f"capacity {used} bytes (no free extent)"
        try:
            await self.pool.volumes.set_vg_capacity(VG, used)
            await anyio.sleep(fault.hold_s)  # time is the subject: the VG stays full
        finally:
            await self.pool.volumes.set_vg_capacity(VG, None)

    async def _meta_errors(self, fault: plan.Fault, record: FaultRecord) -> None:
        """EIO on every read and write of the metadata area: on every host (the LUN) or on
        one host's path."""
        if not self.paths:
            record.detail = "no fault file system"
            return
        hosts = sorted(self.paths)
        one = fault.pick % 2 == 1
        fs = self.paths[hosts[(fault.pick >> 1) % len(hosts)]]
        record.target = f"host {fs.tag.removeprefix('h')}'s path" if one else "every host"
        fs.fail(METADATA, this_mount=one)
        try:
            await anyio.sleep(fault.hold_s)  # time is the subject: the storage stays broken
        finally:
            fs.heal(METADATA, this_mount=one)

    async def _guest_eio(self, fault: plan.Fault, record: FaultRecord) -> None:
        """EIO on every read and write of one running guest's own volume for the hold (on
        every host's view), then healed; the fault ends once the guest runs again (at most
        RESUME_WAIT_S later), so that no later fault meets it still paused."""
        running = [g for g in self.guests.values() if g.fault is not None
                   and g.result is None and not g.migrating and g.guest.vm.returncode is None]
        if not running:
            record.detail = "no running guest on a fault volume"
            return
        g = running[fault.pick % len(running)]
        assert g.fault is not None
        record.target = f"{g.name} on host {g.guest.host_id}"
        g.fault.fail()
        try:
            await anyio.sleep(fault.hold_s)  # time is the subject: the volume stays broken
            at_heal = await _run_state(g.guest.vm)
        finally:
            g.fault.heal()
        healed = anyio.current_time()

        async def runs() -> bool:
            return await _run_state(g.guest.vm) in ("running", "exited")

        try:
            await until(runs, RESUME_WAIT_S, f"{g.name} running again")
            state = "running"
        except AssertionError:
            state = await _run_state(g.guest.vm)
        waited = anyio.current_time() - healed
        record.detail = (f"{at_heal} at the heal; "
                         + (f"running {waited:.1f} s after it" if state == "running"
                            else f"{state} {waited:.0f} s after it"))

    async def _migrate(self, fault: plan.Fault, record: FaultRecord) -> None:
        running = [g for g in self.guests.values() if g.result is None and not g.migrating
                   and g.guest.vm.returncode is None and not await self._still_inactive(g)]
        if not running:
            record.detail = "no running guest"
            return
        g = running[fault.pick % len(running)]
        others = [h for h in sorted(self.pool.hosts) if h != g.guest.host_id]
        target = others[(fault.pick >> 8) % len(others)]
        record.target = f"{g.name}: host {g.guest.host_id} -> {target}"
        g.migrating = True
        try:
            await self._migrate_guest(g, target, fault.hold_s, record)
        finally:
            g.migrating = False

    @staticmethod
    async def _still_inactive(g: _Guest) -> bool:
        """Whether ``g``'s QEMU has not run since it arrived (``_Guest.inactive``): a QMP
        management must not migrate it out before a ``cont`` (docs/migration.md)."""
        if g.inactive and await _run_state(g.guest.vm) == "running":
            g.inactive = False
        return g.inactive

    async def _migrate_guest(self, g: _Guest, target: int, hold_s: float,
                             record: FaultRecord) -> None:
        """A live migration as a QMP management must run it (docs/migration.md): the
        destination held by ``-S``, its host's views prepared after the switchover
        (``volume prepare --direct``: whatever that host's service is doing, killed or
        frozen by another fault), checked against what the guest wrote, then ``cont``."""
        p, source = self.pool, g.guest
        device = await p.host_volumes(target).attach(source.volume)
        workdir = p.directory / "vms" / f"{g.name}-{len(self.report.faults)}-{target}"
        dest = await start_destination(source.vm, [device], workdir,
                                       p.hosts[target].directory / "qmp", autostart=False)
        p.stack.push_async_callback(dest.stop)
        sock = p.directory / f"{g.name}-{len(self.report.faults)}.mig"
        migration = await start_migration(source.vm, dest, sock, max_bandwidth=MIGRATION_BPS)
        seen = await self._watch_source(g.name, source, hold_s)

        unprepared: list[str] = []
        failed: list[str] = []  # prepares that failed and were tried again
        node = dest.spec.drives[0].node_name
        written_on_source: list[int] = []

        async def prepare() -> None:
            # As a management retries a failed start hook: the guest stays paused there
            # meanwhile, and never runs on a view that was not prepared.
            deadline = anyio.current_time() + PREPARE_RETRY_S
            while True:
                try:
                    await prepare_direct(self._tool_config(target), [source.volume])
                    return
                except VmError as err:
                    if anyio.current_time() >= deadline:
                        unprepared.append(str(err))
                        raise
                    failed.append(str(err))
                await anyio.sleep(PREPARE_EVERY_S)  # time is the subject: a fault heals

        async def check() -> None:
            # No guest runs on a view smaller than what was written: what the guest wrote
            # on the source (stopped since the switchover) must fit in the destination's
            # view, right before the guest may run there. "Written" is QEMU's highest
            # write offset bounded by the source's view: a write that failed (ENOSPC) past
            # the view's end raises that offset too (seen: 16 MiB + 320 KiB on a 16 MiB
            # device), which the first soak took for data (its four reports).
            highest = await highest_write(source.vm)
            source_view = await anyio.to_thread.run_sync(loopdev.size_of, source.device)
            view = await anyio.to_thread.run_sync(loopdev.size_of, device)
            written = None if highest is None else min(highest, source_view)
            # QEMU's own length for the destination's node (issue 31): the length it reads
            # within. Taken when QEMU activates the node: at cont with late-block-activate,
            # else already (at the completion), and then final until a write raises it.
            late = await has_late_block_activate(dest)
            length = await node_length(dest, node)
            record.detail += (f"; written {written} (highest {highest}, source view "
                              f"{source_view}), destination view {view}, node {length} "
                              f"({'late' if late else 'active'})")
            if written is not None:
                written_on_source.append(written)
            if written is not None and view < written:
                self.report.violations.append(
                    f"{g.name} runs on host {target} with a view of {view} bytes, less than "
                    f"the {written} bytes written on host {source.host_id} (stale view)")
            if written is not None and not late and length is not None and length < written:
                self.report.violations.append(
                    f"{g.name}'s QEMU on host {target} activated its drive with a length of "
                    f"{length} bytes, less than the {written} bytes written on host "
                    f"{source.host_id}: it reads zeros past it (stale node length)")
            self.report.violations.extend(seen.violations(g.name, source.host_id, source_view))

        try:
            status = await switch_over(migration, prepare, check, timeout=120)
        except (QMPError, EOFError, OSError) as err:
            if source.vm.returncode is None:
                raise
            # The source QEMU died under the migration: the guest is lost; a finding, and
            # the soak goes on (its report shows it) instead of ending here.
            record.detail = f"failed: the source QEMU exited ({err!r})"
            self.report.violations.append(
                f"{g.name}: its QEMU on host {source.host_id} exited during a migration to "
                f"host {target}: {source.vm.workdir / 'qemu.log'}")
            await dest.stop()
            return
        except VmError:
            if not unprepared:
                raise
            status = "completed"
            record.detail += f"; destination not prepared: {unprepared[0]}"
            self.report.violations.append(
                f"{g.name}: host {target}'s views could not be prepared after the "
                f"switchover; the guest is left paused there: {unprepared[0]}")
        if failed:
            record.detail += (f"; prepare failed {len(failed)} time(s) before it "
                              f"{'gave up' if unprepared else 'succeeded'}: {failed[0][-160:]}")
        record.detail = status + record.detail
        if status == "completed" and written_on_source and not unprepared:
            await self._check_node_after_cont(g.name, dest, node, target, source.host_id,
                                              written_on_source[0], record)
        if status == "completed":
            await source.vm.stop()
            g.inactive = await _run_state(dest) != "running"
            g.guest = PoolGuest(dest, target, source.volume, device)
            p.guests[g.name] = g.guest
        else:
            await dest.stop()

    async def _check_node_after_cont(self, vm: str, dest: QemuVm, node: str, target: int,
                                     source_host: int, written: int,
                                     record: FaultRecord) -> None:
        """Right after the lab's ``cont`` (the earliest it can ask), the length QEMU
        activated the destination's node with. Only on a running destination (one that
        arrived ``io-error`` is still inactive: its autoextend resumes it). A guest write
        past the length may already have raised it: this check can miss, never accuse."""
        if await _run_state(dest) != "running":
            return
        try:
            length = await node_length(dest, node)
        except (QMPError, OSError, EOFError, VmError) as err:  # it may have exited since
            record.detail += f"; node after cont unknown: {err}"
            return
        record.detail += f"; node after cont {length}"
        if length is not None and length < written:
            self.report.violations.append(
                f"{vm}'s QEMU on host {target} runs with a drive length of {length} bytes "
                f"after cont, less than the {written} bytes written on host {source_host}: "
                "it reads zeros past it (stale node length)")

    async def _watch_source(self, vm: str, source: PoolGuest, hold_s: float) -> SourceWatch:
        """Hold the migration open for ``hold_s`` while watching the source host: when its
        service first says the VM migrates out, and its view then (the source's own rule,
        which the management's prepare would otherwise hide: the mutation check)."""
        host = self.pool.hosts[source.host_id]
        seen = SourceWatch()
        deadline = anyio.current_time() + hold_s
        while anyio.current_time() < deadline:
            try:
                with anyio.fail_after(2.0):
                    status = await host.status()
            except (AutoextendError, TimeoutError):
                status = None  # down or frozen by another fault: no judgement now
            if status is not None:
                entry = next((v for v in status.get("vms", []) if v.get("vm") == vm), None)
                seen.answered(anyio.current_time(), entry)
                if (entry is not None and entry.get("migration") == "migrating-out"
                        and seen.known_view is None):
                    seen.known_view = await anyio.to_thread.run_sync(loopdev.size_of,
                                                                     source.device)
            await anyio.sleep(0.5)  # time is the subject: the migration stays open
        return seen

    # ------------------------------------------------------------------ the end

    async def settle(self) -> None:
        """Every host running and watching every VM it runs (within SETTLE_S)."""
        deadline = anyio.current_time() + SETTLE_S
        missing: list[str] = []
        while anyio.current_time() < deadline:
            missing = await self._unwatched()
            if not missing:
                return
            await anyio.sleep(0.5)  # time is the subject: polling the hosts' status
        self.report.violations.extend(missing)

    async def _unwatched(self) -> list[str]:
        out = []
        for host_id, host in self.pool.hosts.items():
            if host.process is None or host.process.returncode is not None:
                out.append(f"host {host_id} is not running")
                continue
            try:
                status = await host.status()
            except AutoextendError as err:
                out.append(f"host {host_id} does not answer: {err}")
                continue
            watched = {v["vm"] for v in status.get("vms", []) if v.get("drives")}
            for g in self.guests.values():
                if (g.guest.host_id == host_id and g.guest.vm.returncode is None
                        and g.name not in watched):
                    out.append(f"host {host_id} does not watch {g.name}")
        return out

    async def finish_guests(self, timeout_s: float) -> None:
        """Wait for every guest's result. A guest still writing after ``timeout_s`` is given
        more time while its progress moves (a guest on the FUSE fault volume, or under a
        heavy load, writes slower than planned): that is the lab's pace, not a violation. A
        guest whose progress stands still for ``STALL_S`` (left paused, or hung) is one. A
        guest whose kernel crashed is one at once (looked for every ``STALL_S``): it will
        never finish."""
        vms = self.pool.directory / "vms"

        async def one(g: _Guest) -> None:
            vm = g.guest.vm
            start = anyio.current_time()
            deadline = start + FINISH_LATE_FACTOR * timeout_s
            wait_s = timeout_s
            seen = last_progress(vm.serial_text())
            while True:
                try:
                    g.result = await vm.result(timeout=min(wait_s, STALL_S))
                    return
                except AutoextendError as err:
                    crash = await anyio.to_thread.run_sync(first_kernel_crash, vms, g.name)
                    if crash is not None:
                        await self.read_back(g, crash)
                        return
                    if anyio.current_time() - start < wait_s and vm.returncode is None:
                        continue  # within its time: only a crash ends the wait early
                    now = last_progress(vm.serial_text())
                    moving = now is not None and (seen is None or now > seen)
                    if not moving or anyio.current_time() >= deadline or \
                            vm.returncode is not None:
                        self.report.violations.append(
                            f"{g.name} did not finish its writes (no progress for "
                            f"{wait_s:.0f} s: left paused?): {err.args[0]}")
                        return
                    self.report.late_guests[g.name] = now or 0
                    seen, wait_s, start = now, STALL_S, anyio.current_time()

        async with anyio.create_task_group() as tg:
            for g in self.guests.values():
                tg.start_soon(one, g)

    async def read_back(self, g: _Guest, crash: str) -> None:
        """A guest whose kernel crashed never finishes its writes, and cannot read them
        back. Its QEMU is stopped (SIGTERM: QEMU writes its qcow2 metadata out), and a
        second boot on the same host's view reads back what it had written by its last
        progress report (``Mode.VERIFY``); its result is the guest's. What the guest wrote
        is the storage's to keep; a crash in the guest's RAM is not (``kernel_crash``: the
        guest runs from its initramfs). The crash stays in the report
        (``guest_crashes``), apart from the invariants."""
        vms = self.pool.directory / "vms"
        written = await anyio.to_thread.run_sync(written_by_progress, vms, g.name)
        record: dict[str, Any] = {"crash": crash, "written_mib": written, "verified": None}
        self.report.guest_crashes[g.name] = record
        log.warning("guest kernel crashed; reading back what it wrote", vm=g.name,
                    crash=crash, written_mib=written)
        await g.guest.vm.stop()
        if written == 0:
            return  # nothing on the volume to read back
        job = replace(g.job, mode=Mode.VERIFY, mib=written, rate_kib_s=0, expect_md5="")
        try:
            again = await self.pool.launch_guest(
                g.guest.host_id, f"{g.name}-readback", job, g.guest.volume, g.guest.device)
            g.guest = again
            g.result = await again.vm.result(timeout=READ_BACK_TIMEOUT_S)
        except AutoextendError as err:
            self.report.violations.append(
                f"{g.name}: what it wrote before its kernel crashed could not be read back: "
                f"{err.args[0] if err.args else err}")
            return
        record["verified"] = g.result.verified

    async def check(self) -> None:
        r, cfg = self.report, self.cfg
        events = [(h, e) for h, host in self.pool.hosts.items() for e in host.log_events()]
        for g in self.guests.values():
            path = str(self.pool.directory / "volumes" / VG / g.guest.volume.lv)
            size = os.stat(path).st_size
            try:
                await g.guest.vm.wait_exit(timeout=120)
            except AutoextendError as err:  # reported by finish_guests; stop it to check
                log.warning("guest still running at the check; stopping it", vm=g.name,
                            error=err.args[0][:200])
                await g.guest.vm.stop()
            check = await qemu_img_check(path)
            res = g.result
            r.guests[g.name] = {
                "host": g.guest.host_id, "mib": g.job.mib, "rate_kib_s": g.job.rate_kib_s,
                "verified": bool(res and res.verified), "error": res.error if res else "none",
                "size": size, "image_end_offset": check.image_end_offset,
                "qemu_img_check_clean": check.clean,
            }
            if res is not None and not res.verified:
                r.violations.append(f"{g.name}: data does not verify ({res.error})")
            if not check.clean:
                r.violations.append(f"{g.name}: qemu-img check not clean: {check.raw}")
            bad = plan.growth_violation(g.name, size, cfg.start_mib * MiB,
                                        check.image_end_offset, cfg.chunk_mib * MiB, EXTENT)
            if bad:
                r.violations.append(bad)
        r.violations.extend(plan.spm_writer_violations(events))
        for host_id, host in self.pool.hosts.items():
            r.violations.extend(plan.tracebacks(host_id, host.log_path.read_text(
                errors="replace")))
        found = plan.pauses(events)
        r.pauses = [{"vm": x.vm, "host": x.host, "reason": x.reason,
                     "at_s": round(x.start - self.wall0, 3),
                     "duration_s": None if x.duration_s is None else round(x.duration_s, 3),
                     "gone": x.gone, "restarted": x.restarted}
                    for x in found]
        lat = plan.extension_latencies(events)
        every = [v for values in lat.values() for v in values]
        r.extensions = {"count": len(every), "p50_s": plan.percentile(every, 0.5),
                        "p99_s": plan.percentile(every, 0.99),
                        "max_s": max(every) if every else None,
                        "spm_changes": sum(1 for _, e in events
                                           if e.get("event") == "volume extended")}


async def _run_state(vm: QemuVm) -> str:
    """QEMU's run state (``query-status``: running, io-error, ...), or ``exited``."""
    if vm.returncode is not None:
        return "exited"
    try:
        async with vm.qmp("chaos") as client:
            reply = await client.execute("query-status")
    except (VmError, QMPError, OSError, EOFError) as err:
        return "exited" if vm.returncode is not None else f"unknown ({err})"
    return str(reply.get("status", "unknown")) if isinstance(reply, dict) else "unknown"


async def highest_write(vm: QemuVm) -> int | None:
    """The highest offset the guest's drive wrote on its device (``query-blockstats``: the
    protocol node's ``wr_highest_offset``), or None if QEMU does not say."""
    async with vm.qmp("chaos") as client:
        reply = await client.execute("query-blockstats")
    if not isinstance(reply, list) or not reply:
        return None
    parent = reply[0].get("parent") if isinstance(reply[0], dict) else None
    try:
        return int(parent["stats"]["wr_highest_offset"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None


def _config_json(cfg: SoakConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out["directory"] = str(cfg.directory) if cfg.directory else None
    out["chunk_mib"] = cfg.soak_chunk_mib  # what the hosts ran with
    out["rate_scale"] = round(cfg.scale, 4)
    return out


async def soak(cfg: SoakConfig) -> SoakReport:
    """Run one soak; the lab is always torn down (its directory too, unless it was given
    or ``AUTOEXTEND_KEEP_POOL`` is set)."""
    started = time.monotonic()
    runner = ("-m", "sim.mutant_service", "--off", ",".join(cfg.mutant)) if cfg.mutant \
        else ("-m", "autoextend")
    faults = plan.plan_faults(cfg.seed, cfg.duration_s, cfg.timing, cfg.kinds)
    directory = cfg.directory or Path(tempfile.mkdtemp(prefix="autoextend-chaos-",
                                                       dir="/var/tmp"))
    try:
        return await _soak(cfg, directory, runner, faults, started)
    finally:
        if cfg.directory is None and not os.environ.get("AUTOEXTEND_KEEP_POOL"):
            await anyio.to_thread.run_sync(
                lambda: shutil.rmtree(directory, ignore_errors=True))


async def _soak(cfg: SoakConfig, directory: Path, runner: tuple[str, ...],
                faults: list[plan.Fault], started: float) -> SoakReport:
    async with AsyncExitStack() as stack:
        paths: dict[int, FaultFs] = {}
        if any(k in plan.STORAGE_FAULTS for k in cfg.kinds):
            # Each host reaches the metadata area through its own mount of one directory,
            # so that the area can fail for every host or on one host's path.
            for host_id in range(1, cfg.hosts + 1):
                paths[host_id] = await stack.enter_async_context(fault_fs(
                    directory / f"path-{host_id}", backing=directory / "meta",
                    tag=f"h{host_id}"))
        volfs = None
        if cfg.fault_volumes:
            volfs = await stack.enter_async_context(fault_fs(
                directory / "guest-volumes", backing=directory / "guest-data"))
        p = await stack.enter_async_context(pool(
            cfg.hosts, chunk_mib=cfg.soak_chunk_mib, poll_interval_s=1.0,
            directory=directory, runner=runner,
            metadata_dir=directory / "meta" if paths else None,
            host_metadata={h: fs.path(METADATA) for h, fs in paths.items()}))
        run = Soak(cfg, p, paths, volfs)
        await p.wait_for_spm()
        await run.start_guests()
        for g in run.guests.values():
            await g.guest.vm.wait_for_start(timeout=300)
        run.t0, run.wall0 = anyio.current_time(), time.time()
        log.info("chaos soak started", seed=cfg.seed, faults=len(faults),
                 replay=cfg.replay())
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.supervise)
            async with anyio.create_task_group() as lanes:
                for lane in (0, 1):
                    lanes.start_soon(run.run_lane, [f for f in faults if f.lane == lane])
            await run.settle()
            await run.finish_guests(timeout_s=max(300.0, cfg.duration_s))
            tg.cancel_scope.cancel()
        await run.settle()
        await run.check()
        run.report.elapsed_s = round(time.monotonic() - started, 1)
        return run.report
