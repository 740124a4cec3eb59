"""The loop-block check catches a loop that blocks (off-CPU or on-CPU) and excuses preemption."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from autoextend.lab.loopblock import LoopBlockWatch, Snapshot


async def _sleeps_in_the_loop() -> None:
    await asyncio.sleep(0)  # a second callback: the blocking one is not the first step
    time.sleep(0.3)  # blocking on purpose: this is what the check must catch


async def _spins_in_the_loop(cpu_s: float) -> None:
    await asyncio.sleep(0)  # a second callback: the spinning one is not the first step
    start = time.thread_time()
    while time.thread_time() - start < cpu_s:
        pass


def test_a_sleep_in_the_loop_is_caught() -> None:
    watch = LoopBlockWatch(0.1)
    with watch.watching():
        asyncio.run(_sleeps_in_the_loop())
    assert len(watch.blocks) == 1, watch.blocks
    block = watch.blocks[0]
    assert "_sleeps_in_the_loop" in block.callback
    assert block.wall_s >= 0.3 and block.blocked_s >= 0.1


def test_cpu_work_in_the_loop_is_caught() -> None:
    watch = LoopBlockWatch(0.1)
    with watch.watching():
        asyncio.run(_spins_in_the_loop(0.15))
    assert [b.callback for b in watch.blocks] and watch.blocks[0].cpu_s >= 0.15


def test_the_patch_is_removed_after_watching() -> None:
    import asyncio.events
    before = asyncio.events.Handle._run
    watch = LoopBlockWatch(0.1)
    with watch.watching(), pytest.raises(RuntimeError):  # one watch at a time
        with LoopBlockWatch().watching():
            pass
    assert asyncio.events.Handle._run is before
    with watch.watching():
        asyncio.run(asyncio.sleep(0))  # a loop that runs a callback or two
    assert watch.blocks == [] and watch.callbacks > 0


def _snap(own_cpu: float = 0.0, own_wait: float = 0.0, others: dict[str, float] | None = None,
          process_cpu: float = 0.0, steal: float = 0.0, gc: float = 0.0, voluntary: int = 0,
          disk: int = 0) -> Snapshot:
    return Snapshot(own_cpu, own_wait, others or {}, process_cpu, steal, gc, voluntary, disk)


@pytest.mark.parametrize(("voluntary", "disk", "flagged"), [
    (1, 0, True),    # it went to sleep, no disk: 480 ms blocked of its own accord
    (0, 0, False),   # it never slept: the time off the CPU was preemption
    (1, 2, False),   # it waited for the disk (a loaded machine's I/O), not for a sleep
])
def test_a_slow_callback_is_judged_by_its_rusage(
    monkeypatch: pytest.MonkeyPatch, voluntary: int, disk: int, flagged: bool
) -> None:
    watch = LoopBlockWatch(0.1)
    watch._snap = _snap(own_cpu=1.0, process_cpu=20.0, voluntary=10, disk=5)
    after = _snap(own_cpu=1.02, process_cpu=20.02, voluntary=10 + voluntary, disk=5 + disk)
    monkeypatch.setattr(watch, "snapshot", lambda: after)
    watch._callback_finished(lambda: "the callback", 0.5, 0.02)
    assert [b.callback for b in watch.blocks] == (["the callback"] if flagged else [])


def test_the_bound_excuses_preemption_gil_waits_steal_and_gc() -> None:
    watch = LoopBlockWatch(0.1)
    start = _snap(own_cpu=1.0, own_wait=1.0, others={"7": 5.0, "8": 9.0}, process_cpu=20.0)
    # 500 ms wall, 20 ms CPU; 480 ms waiting for a CPU: preempted, not blocked
    preempted = _snap(own_cpu=1.02, own_wait=1.48, others={"7": 5.0, "8": 9.0},
                      process_cpu=20.02)
    assert watch.blocked_bound(start, preempted, 0.5, 0.02) < 0.1
    # another thread ran (held the GIL) for 480 ms, then exited: process CPU still shows it
    gil = _snap(own_cpu=1.02, own_wait=1.0, others={"7": 5.0}, process_cpu=20.5)
    assert watch.blocked_bound(start, gil, 0.5, 0.02) < 0.1
    # a new thread waited on the run queue holding the GIL: counted whole
    new = _snap(own_cpu=1.02, own_wait=1.0, others={"7": 5.0, "8": 9.0, "9": 0.48},
                process_cpu=20.02)
    assert watch.blocked_bound(start, new, 0.5, 0.02) < 0.1
    stolen = _snap(own_cpu=1.02, own_wait=1.0, others={"7": 5.0, "8": 9.0}, steal=0.48,
                   process_cpu=20.02)
    assert watch.blocked_bound(start, stolen, 0.5, 0.02) < 0.1
    collected = _snap(own_cpu=1.02, own_wait=1.0, others={"7": 5.0, "8": 9.0}, gc=0.48,
                      process_cpu=20.02)
    assert watch.blocked_bound(start, collected, 0.5, 0.02) < 0.1
    # none of these: 480 ms off-CPU of its own accord
    blocked = _snap(own_cpu=1.02, own_wait=1.0, others={"7": 5.0, "8": 9.0}, process_cpu=20.02)
    assert watch.blocked_bound(start, blocked, 0.5, 0.02) >= 0.4


def test_real_preemption_is_not_blocking() -> None:
    """Pin the loop thread and a higher-priority CPU hog to one CPU: a callback that needs
    40 ms of CPU takes several times that in wall time, and is not flagged."""
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    hog = subprocess.Popen(
        [sys.executable, "-c", "import os, sys\nos.nice(-10)\nsys.stdout.write('go\\n')\n"
         "sys.stdout.flush()\nwhile True: pass"],
        stdout=subprocess.PIPE, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    try:
        assert hog.stdout is not None and hog.stdout.readline() == b"go\n"
        os.sched_setaffinity(0, {cpu})
        watch = LoopBlockWatch(0.1)
        with watch.watching():
            asyncio.run(_spins_in_the_loop(0.04))
    finally:
        os.sched_setaffinity(0, saved)
        hog.kill()
        hog.wait()
    assert watch.worst_wall_s >= 0.1, "the hog did not preempt the loop: the test proves nothing"
    assert watch.blocks == []


PLUGIN_TEST = """
import time
import pytest

async def test_blocks() -> None:
    time.sleep(0.3)  # blocking on purpose

@pytest.mark.loop_may_block("says so")
async def test_blocks_and_says_so() -> None:
    time.sleep(0.3)  # blocking on purpose, and marked

@pytest.mark.slow
async def test_slow_tests_are_not_watched() -> None:
    time.sleep(0.3)  # blocking on purpose, in a slow test

async def test_awaits() -> None:
    import asyncio
    await asyncio.sleep(0.3)  # awaiting is not blocking
"""


def test_the_plugin_fails_a_blocking_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it=PLUGIN_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "autoextend.lab.loopcheck", "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
        "-o", "markers=slow", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*_ test_blocks _*", "the event loop blocked for >= 100 ms*",
                                 "*task*(test_blocks at*blocked off-CPU"])
    result.stdout.fnmatch_lines(["loop-block check: 2 async tests*"])
