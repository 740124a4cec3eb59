"""Catch event-loop blocking in tests, without mistaking preemption for it.

A callback that runs for 300 ms of *wall* time did not necessarily block: on a loaded 2-core
machine the scheduler can take the CPU away from the loop thread for that long (a CPU hog, QEMU
guests), another Python thread can hold the GIL, the hypervisor can steal the vCPU, or the
garbage collector can run. Only time the loop thread spent *off the CPU of its own accord* (a
sleep, a blocking read, a subprocess wait) or *on the CPU in the callback's own code* is the
callback's fault. So every asyncio callback (``Handle._run``: task steps, ``call_soon``,
timers) is measured with two cheap clocks, and a slow one is then explained with the kernel's
per-thread scheduler statistics (``/proc/self/task/TID/schedstat``: CPU time and *run-queue
wait*, i.e. time runnable but preempted):

    off_cpu_blocked >= wall - own_cpu - own_runqueue_wait - other_threads(cpu + runqueue wait)
                       - steal - gc

The subtracted terms are measured over a window that starts at most ``SNAPSHOT_EVERY_S``
before the callback (a superset of it), so the bound can only err low: preemption, GIL waits
and steal are never counted as blocking. Two more excuses, from the thread's rusage over the
window: no voluntary context switch means the thread never slept (all of its off-CPU time was
preemption), and disk activity (block reads or writes, major page faults) means it may have
waited for a loaded disk, which is the machine's load, not the callback's design. The
callback is flagged when that lower bound, or its own CPU time minus GC, reaches the
threshold (100 ms by default). A ``time.sleep(0.3)`` in the loop is caught (bound ~ 250-300
ms); a callback preempted for a second is not.

:class:`LoopBlockWatch` is the checker; :mod:`autoextend.lab.loopcheck` is the pytest plugin.
"""

from __future__ import annotations

import asyncio.events
import gc
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

THRESHOLD_S = 0.1
# The subtracted terms are taken over a window that starts at most this long before a slow
# callback: a fresh snapshot is taken at a callback's start when the last one is older.
SNAPSHOT_EVERY_S = 0.05
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    """What the kernel and the interpreter say about this process at one instant."""

    own_cpu: float          # the loop thread's CPU time
    own_wait: float         # the loop thread's run-queue wait (runnable, not running)
    others: dict[str, float]  # every other live thread's CPU time + run-queue wait, by id
    process_cpu: float      # the process's CPU time (includes threads that have exited)
    steal: float            # the machine's stolen time (all CPUs)
    gc: float               # wall time spent in the garbage collector
    voluntary: int = 0      # the loop thread's voluntary context switches (it slept)
    disk: int = 0           # its block reads + writes + major page faults


@dataclass(frozen=True)
class Block:
    """One callback that blocked the loop."""

    callback: str
    wall_s: float
    cpu_s: float
    blocked_s: float        # the lower bound on off-CPU blocking (see the module docstring)

    def __str__(self) -> str:
        return (f"{self.callback}: {self.wall_s * 1000:.0f} ms wall, {self.cpu_s * 1000:.0f} ms "
                f"CPU, at least {self.blocked_s * 1000:.0f} ms blocked off-CPU")


def _schedstat(tid: int | str) -> tuple[float, float]:
    """(CPU time, run-queue wait) of one thread in seconds; zeros if it is gone."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
            cpu, wait, _ = f.read().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(cpu) / 1e9, int(wait) / 1e9


def _steal() -> float:
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        return int(fields[8]) * _TICK_S
    except (OSError, ValueError, IndexError):
        return 0.0


class LoopBlockWatch:
    """Measures every asyncio callback run by the thread that :meth:`watching` is entered on.

    One watch is active per process at a time (it patches ``asyncio.events.Handle._run``
    while active, and restores it after)."""

    def __init__(self, threshold_s: float = THRESHOLD_S) -> None:
        self.threshold_s = threshold_s
        self.blocks: list[Block] = []
        self.callbacks = 0
        self.worst_wall_s = 0.0     # the slowest callback by wall time (preemption included)
        self.worst_blocked_s = 0.0  # the largest blocking bound or own CPU seen
        self.worst: Block | None = None  # ... and that callback
        self._tid = 0
        self._gc_total = 0.0
        self._gc_started: float | None = None
        self._snap: Snapshot | None = None
        self._snap_at = 0.0

    # --------------------------------------------------------------- measuring

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self._gc_total += time.perf_counter() - self._gc_started
            self._gc_started = None

    def snapshot(self) -> Snapshot:
        own_cpu, own_wait = _schedstat(self._tid)
        others: dict[str, float] = {}
        try:
            tids = os.listdir("/proc/self/task")
        except OSError:
            tids = []
        for tid in tids:
            if tid != str(self._tid):
                cpu, wait = _schedstat(tid)
                others[tid] = cpu + wait
        usage = resource.getrusage(resource.RUSAGE_THREAD)  # the loop thread's own
        return Snapshot(own_cpu, own_wait, others, time.process_time(), _steal(),
                        self._gc_total, usage.ru_nvcsw,
                        usage.ru_inblock + usage.ru_oublock + usage.ru_majflt)

    def _callback_started(self, now: float) -> None:
        if self._snap is None or now - self._snap_at > SNAPSHOT_EVERY_S:
            self._snap = self.snapshot()
            self._snap_at = now

    def blocked_bound(self, before: Snapshot, after: Snapshot, wall: float, cpu: float) -> float:
        """The lower bound on the callback's off-CPU blocking (see the module docstring).

        ``wall`` and ``cpu`` are the callback's own; ``before``/``after`` span a window that
        contains it."""
        own_cpu_window = after.own_cpu - before.own_cpu
        # A thread that started in the window counts whole; one that exited is covered by
        # the process's CPU time (which keeps exited threads' share).
        live = 0.0
        for tid, value in after.others.items():
            earlier = before.others.get(tid, 0.0)
            live += value - earlier if value >= earlier else value  # (a reused id: whole)
        others = max(live, (after.process_cpu - before.process_cpu) - own_cpu_window)
        excused = ((after.own_wait - before.own_wait) + max(0.0, others)
                   + (after.steal - before.steal) + _TICK_S
                   + (after.gc - before.gc))
        return wall - cpu - excused

    def _callback_finished(self, label: Callable[[], str], wall: float, cpu: float) -> None:
        self.callbacks += 1
        self.worst_wall_s = max(self.worst_wall_s, wall)
        if wall < self.threshold_s or self._snap is None:
            return
        before, after = self._snap, self.snapshot()
        cpu_own = cpu - (after.gc - before.gc)
        blocked = self.blocked_bound(before, after, wall, cpu)
        if after.voluntary == before.voluntary or after.disk != before.disk:
            # It never went to sleep (the time off the CPU was preemption), or it waited for
            # the disk (a page fault, a read, dirty-page throttling: the machine's load).
            blocked = min(blocked, 0.0)
        block = Block(label(), wall, cpu, max(0.0, blocked))
        if max(blocked, cpu_own) > self.worst_blocked_s:
            self.worst_blocked_s, self.worst = max(blocked, cpu_own), block
        if blocked >= self.threshold_s or cpu_own >= self.threshold_s:
            self.blocks.append(block)
        # The next callback's window starts afresh (this one's terms are spent).
        self._snap, self._snap_at = after, time.perf_counter()

    # --------------------------------------------------------------- activation

    @contextmanager
    def watching(self) -> Iterator[LoopBlockWatch]:
        """Measure the callbacks this thread runs until the block exits."""
        handle_cls = asyncio.events.Handle
        original = handle_cls._run
        if getattr(original, "_loopblock_patch", False):
            raise RuntimeError("a LoopBlockWatch is already active")
        self._tid = threading.get_native_id()
        watch = self
        perf, thread_cpu = time.perf_counter, time.thread_time

        def _run(handle: asyncio.events.Handle) -> None:
            if threading.get_native_id() != watch._tid:  # another thread's loop
                original(handle)
                return
            t0 = perf()
            watch._callback_started(t0)
            c0 = thread_cpu()
            try:
                original(handle)
            finally:
                wall = perf() - t0
                cpu = thread_cpu() - c0
                watch._callback_finished(lambda: _describe(handle), wall, cpu)

        _run._loopblock_patch = True  # type: ignore[attr-defined]
        handle_cls._run = _run  # type: ignore[method-assign,assignment]
        gc.callbacks.append(self._on_gc)
        try:
            yield self
        finally:
            handle_cls._run = original  # type: ignore[method-assign]
            gc.callbacks.remove(self._on_gc)


def _describe(handle: asyncio.events.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        code = getattr(coro, "cr_code", None)
        if code is not None:
            return f"task {owner.get_name()} ({code.co_qualname} at "\
                   f"{code.co_filename}:{code.co_firstlineno})"
        return f"task {owner.get_name()}"
    return repr(handle)
