"""Takeover between real processes on a shared /var/tmp file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio
import pytest

from autoextend.lab.leasefile import format_file
from autoextend.lease.timeouts import lease_timeouts

from .takeover import measure

T, W = 0.1, 0.3


@pytest.mark.slow
async def test_takeover_after_sigkill_within_bounds() -> None:
    to = lease_timeouts(T, W)
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-takeover-") as tmp:
        area = Path(tmp) / "area.img"
        await format_file(area, 16)
        result = await anyio.to_thread.run_sync(
            lambda: measure(area, T, W, kill=True, timeout=30)
        )
    assert result.seconds >= to.takeover_min
    assert result.seconds <= to.takeover_max_worst


@pytest.mark.slow
async def test_takeover_after_release_within_one_renewal_interval() -> None:
    to = lease_timeouts(T, W)
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="autoextend-takeover-") as tmp:
        area = Path(tmp) / "area.img"
        await format_file(area, 16)
        result = await anyio.to_thread.run_sync(
            lambda: measure(area, T, W, kill=False, timeout=30)
        )
    assert 0 < result.seconds <= to.renewal_interval
