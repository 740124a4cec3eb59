"""pytest plugin: fail an async test whose event loop blocked (see :mod:`.loopblock`).

Register it with ``pytest_plugins = ["autoextend.lab.loopcheck"]``. It watches the call phase
of every ``async def`` test that is not marked ``slow`` (set ``AUTOEXTEND_LOOPCHECK=all`` to
watch slow tests too, ``=off`` to watch none). A callback that kept the loop from running for
at least 100 ms, by its own CPU work or by blocking off-CPU (preemption, GIL waits, steal and
GC excused), fails the test with the callback's name. A test that blocks on purpose says so
with ``@pytest.mark.loop_may_block("why")``. The terminal summary gives the worst figures seen.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Generator

import pytest

from autoextend.lab.loopblock import THRESHOLD_S, LoopBlockWatch

ENV = "AUTOEXTEND_LOOPCHECK"
_STATS_KEY = pytest.StashKey[dict[str, float]]()
_WORST_KEY = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "loop_may_block(reason): this test blocks the event loop on purpose"
    )
    config.stash[_STATS_KEY] = {"tests": 0, "callbacks": 0, "worst_wall_s": 0.0,
                                "worst_blocked_s": 0.0}


def watched(item: pytest.Item) -> bool:
    mode = os.environ.get(ENV, "unit")
    if mode == "off" or not isinstance(item, pytest.Function):
        return False
    if not inspect.iscoroutinefunction(item.obj):
        return False
    if item.get_closest_marker("loop_may_block") is not None:
        return False
    return mode == "all" or item.get_closest_marker("slow") is None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    if not watched(item):
        return (yield)
    watch = LoopBlockWatch(THRESHOLD_S)
    with watch.watching():
        result = yield
    stats = item.config.stash[_STATS_KEY]
    stats["tests"] += 1
    stats["callbacks"] += watch.callbacks
    stats["worst_wall_s"] = max(stats["worst_wall_s"], watch.worst_wall_s)
    if watch.worst is not None and watch.worst_blocked_s > stats["worst_blocked_s"]:
        stats["worst_blocked_s"] = watch.worst_blocked_s
        item.config.stash[_WORST_KEY] = f"{item.nodeid}: {watch.worst}"
    if watch.blocks:
        lines = "\n  ".join(str(b) for b in watch.blocks)
        pytest.fail(f"the event loop blocked for >= {THRESHOLD_S * 1000:.0f} ms "
                    f"(preemption excused):\n  {lines}", pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    stats = config.stash.get(_STATS_KEY, None)
    if not stats or not stats["tests"]:
        return
    terminalreporter.write_line(
        f"loop-block check: {stats['tests']:.0f} async tests, {stats['callbacks']:.0f} "
        f"callbacks; slowest callback {stats['worst_wall_s'] * 1000:.0f} ms wall, worst "
        f"blocking/CPU bound {stats['worst_blocked_s'] * 1000:.0f} ms "
        f"(fails at {THRESHOLD_S * 1000:.0f} ms)"
    )
    worst = config.stash.get(_WORST_KEY, None)
    if worst:
        terminalreporter.write_line(f"loop-block check: worst: {worst}")
