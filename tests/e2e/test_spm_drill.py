"""``autoextend spm drill`` (issue 33 item 3) on a two-host lab pool while a guest writes:
the SPM role moves the clean way, the drill reports the measured takeover and what it saw,
and its unclean-failover prediction is the configured bound (8T + W, and 8T + W + 2T for
requests). Run on a host that is not the SPM, it says which host is, in one line."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import pool
from autoextend.lab.waiting import until
from autoextend.lease.timeouts import lease_timeouts
from autoextend.timeouts import failover_s

pytestmark = pytest.mark.slow
MiB = 1 << 20


async def test_drill_moves_the_role_and_reports(lab_tmp_path: Path) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64) as p:
        spm = await p.wait_for_spm()
        other = 3 - spm
        guest = await p.start_guest(other, "vm1", GuestJob(mib=256), start_mib=64,
                                    virtual_mib=1024)

        def cli(host: int, *args: str) -> list[str]:
            return [sys.executable, "-m", "autoextend", "--config", str(p.hosts[host].config),
                    *args]

        refused = await anyio.run_process(cli(other, "spm", "drill"), check=False)
        assert refused.returncode == 1
        assert refused.stderr.decode().strip() == (
            f"autoextend: error: service refused spm_drill: this host (host {other}) is not the "
            f"SPM (host {spm} is): run "
            "the drill on the SPM host")

        async def extended() -> bool:
            st = (await p.statuses())[other]
            return int(st["service"]["extends"]) > 0

        await until(extended, 300, "a first extension through the SPM")
        done = await anyio.run_process(cli(spm, "spm", "drill", "--json"), check=False)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["host_id"] == spm and report["new_spm"] == other
        assert report["new_lver"] > report["old_lver"]
        assert 0 < report["takeover_s"] <= report["unclean_failover_s"]
        assert report["handed_back"] >= 0 and report["enospc_pauses"] >= 0

        lease = tomllib.loads(p.hosts[spm].config.read_text())["lease"]
        t, w = lease["io_timeout_s"], lease["watchdog_fire_timeout_s"]
        assert report["unclean_takeover_s"] == pytest.approx(lease_timeouts(t, w).takeover_min)
        assert report["unclean_takeover_s"] == pytest.approx(8 * t + w)
        assert report["unclean_failover_s"] == pytest.approx(failover_s(t, w))
        assert await p.wait_for_spm(timeout_s=30) == other

        again = await anyio.run_process(cli(other, "spm", "drill"), check=False)
        assert again.returncode == 0, again.stderr
        text = again.stdout.decode()
        assert f"SPM drill: host {other} stepped down" in text
        assert f"host {spm} took the SPM role" in text and "8T + W =" in text
        result = await guest.vm.result(timeout=600)
        assert result.verified, result

