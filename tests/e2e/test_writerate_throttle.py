"""Issue 30, item 6: write-rate chunks combined with the throttle, through a stopped SPM.

The same run as tests/e2e/test_throttle_mailbox.py (two ``autoextend run`` hosts on one pool
through the storage mailbox, lab timing, a real TCG guest writing 1 GiB as fast as it can on
the host that is not the SPM, the SPM stopped with SIGSTOP for 20 s once five extensions
were measured), with ``chunk_mode = "write_rate_throttle"``: chunks sized by the guest's
write rate between 32 MiB and the fixed 64 MiB (a 16 to 32 MiB watermark), each drive's
margin corrected by the near-miss figures, and the throttle carrying the failover.

The negative control is in test_throttle_mailbox.py: the fixed 64 MiB chunk without the
throttle pauses in this run. Here:

- no pause, and the data verifies;
- the guest was throttled through the stall, and every extension added at most the fixed
  chunk (never more space stranded than the fixed chunk would);
- the limit is lifted after the stall (by a re-arm, or once the guest slowed down: in this
  mode a guest faster than its watermark covers keeps a limit between extensions).

No timing is asserted: only pauses, data, sizes and the order of what the host logged. The
rate at which a fixed chunk pauses without an outage depends on the machine's load (its
extension time), so the stall, not a rate, is what makes the fixed chunk pause here.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import pool, timeline, vm_events
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow
MiB = 1 << 20
CHUNK = 64 * MiB
THROTTLED = "guest writes throttled until the extension lands"
LIFTED = "throttle lifted"
POLICY = "\n".join((
    'chunk_mode = "write_rate_throttle"',
    "min_chunk_mib = 32",
    "max_chunk_mib = 1024",
    "rate_margin = 2.0",
    "assumed_latency_s = 0.5",
    "throttle_floor_mib_s = 1",
))


def count(events: list[dict[str, Any]], name: str) -> int:
    return sum(1 for e in events if e.get("event") == name)


@pytest.mark.timeout(900)  # a guest writing 1 GiB under TCG beside other load, a failover
async def test_combined_policy_carries_a_guest_through_a_stopped_spm(
    lab_tmp_path: Path,
) -> None:
    directory = lab_tmp_path / "combined"
    directory.mkdir()
    async with pool(2, directory=directory, chunk_mib=64, policy_extra=POLICY) as p:
        spm = await p.wait_for_spm()
        host = next(h for h in p.hosts if h != spm)
        g = await p.start_guest(host, "vm1", GuestJob(mib=1024), start_mib=64,
                                virtual_mib=2048)
        volume = str(g.volume)
        await until(lambda: count(vm_events(p, host, volume), "extended") >= 5, 900,
                    "five extensions (a measured p99 and rate)",
                    describe=lambda: count(vm_events(p, host, volume), "extended"))
        process = p.hosts[spm].process
        assert process is not None and process.returncode is None
        process.send_signal(signal.SIGSTOP)
        try:
            await anyio.sleep(20.0)  # time is the subject: the SPM is stopped for 20 s
        finally:
            process.send_signal(signal.SIGCONT)
        result = await g.vm.result(timeout=900)
        events = vm_events(p, host, volume)
    names = [e.get("event") for e in events]
    assert result.verified, result
    paused = [e for e in events if e.get("event") == "vm paused"]
    assert not paused, "a pause:\n" + timeline(events)
    assert THROTTLED in names, "the stall did not throttle the guest"
    steps = [e["size"] - e["physical"] for e in events if e.get("event") == "extending"]
    assert steps and all(0 < s <= CHUNK for s in steps), steps
    first = names.index(THROTTLED)
    assert "extended" in names[first:], "no extension landed after the stall"
    assert any(str(n).startswith(LIFTED) for n in names[first:]), names[first:]
