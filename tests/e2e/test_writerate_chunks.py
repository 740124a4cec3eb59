"""Issue 15: a burst that a fixed small chunk pauses on, carried by write-rate chunks.

A real TCG guest writes 96 MiB as fast as it can, in 1 MiB O_DIRECT writes, into a 16 MiB
thin volume. With a fixed 4 MiB chunk at 90 % utilization the watermark is 0.4 MiB: a 1 MiB
write that crosses the threshold runs past the end of the volume 60 % of the time, so over
about twenty extensions the guest pauses on ENOSPC (and is resumed). With write-rate chunks
(64 MiB until a rate is measured, at 75 % utilization; then the watermark covers
rate x latency x 2, with chunks of at least 32 MiB: an 8 MiB watermark, so that a rate
measured while the guest was still idle cannot leave less room than a few of its 1 MiB
writes, even beside a CPU hog) the same burst runs without a pause. No timing is asserted: only pauses, data and sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.singlehost import host_settings, lab_host
from autoextend.monitor.observer import Tally

pytestmark = pytest.mark.slow
MiB = 1 << 20


async def burst(workdir: Path, policy: dict[str, Any]) -> tuple[Tally, dict[str, int]]:
    tally = Tally()
    settings = host_settings(workdir, chunk_mib=4, utilization_percent=90,
                             extra={"policy": policy})
    chunks: dict[str, int] = {}  # the largest chunk seen in use, per volume
    async with lab_host(settings, workdir=workdir, observer=tally) as host:

        async def watch_chunks() -> None:
            while True:
                for volume, chunk in host.service.chunks.chunks().items():
                    chunks[str(volume)] = max(chunk, chunks.get(str(volume), 0))
                await anyio.sleep(0.01)  # time is the subject: samples the chunk in use

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_chunks)
            guest = await host.start_guest("vm1", GuestJob(mib=96), start_mib=16,
                                           virtual_mib=256)
            result = await guest.vm.result(timeout=600)
            assert await guest.vm.wait_exit(timeout=60) == 0
            tg.cancel_scope.cancel()
        assert result.verified, result
    return tally, chunks


async def test_fixed_small_chunk_pauses_write_rate_chunks_do_not(lab_tmp_path: Path) -> None:
    fixed, fixed_chunks = await burst(lab_tmp_path / "fixed", {"chunk_mode": "fixed"})
    assert fixed.enospc_pauses >= 1, fixed
    assert fixed.resumes >= 1
    assert set(fixed_chunks.values()) == {4 * MiB}

    rate, rate_chunks = await burst(lab_tmp_path / "rate", {
        "chunk_mode": "write_rate", "chunk_mib": 64, "utilization_percent": 75,
        "min_chunk_mib": 32, "max_chunk_mib": 256, "rate_margin": 2.0, "assumed_latency_s": 0.25,
    })
    assert rate.enospc_pauses == 0, rate
    assert rate.extends >= 1 and rate.failed == 0
    assert all(32 * MiB <= c <= 256 * MiB for c in rate_chunks.values()), rate_chunks
