"""THE polling helper: returns once the condition holds, fails naming what and the last state."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from autoextend.lab.waiting import until


async def test_returns_once_another_task_makes_the_condition_true() -> None:
    state = {"done": False}

    async def later() -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        state["done"] = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        await until(lambda: state["done"], 30.0, "the flag")
    assert state["done"]


async def test_timeout_names_what_and_the_last_observed_state() -> None:
    seen = {"size": 0}

    def cond() -> bool:
        seen["size"] += 1
        return False

    with pytest.raises(AssertionError) as info:
        await until(cond, 0.05, "the volume to grow", describe=lambda: {"size": seen["size"]})
    message = str(info.value)
    assert "timed out after 0.05 s waiting for the volume to grow" in message
    assert f"last observed: {{'size': {seen['size']}}}" in message
    assert seen["size"] >= 1


async def test_a_failing_describe_does_not_hide_the_timeout() -> None:
    def broken() -> object:
        raise KeyError("vm1")

    with pytest.raises(AssertionError, match=r"waiting for x; last observed: .*describe failed"):
        await until(lambda: False, 0.01, "x", describe=broken)
