"""Issue 29 item 6: ``autoextend lease dump`` of the native engine, plain and ``--json``, on a
live pool of two ``autoextend run`` hosts (the sanlock engine's dump is tested in
tests/e2e/test_sanlock_engine.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.multihost import MAX_HOSTS, Pool, pool
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoextend", "--config", str(config), *args],
                          capture_output=True, text=True, check=False, timeout=60)


async def spm_info(p: Pool, host_id: int) -> dict[str, Any]:
    spm = (await p.hosts[host_id].status())["spm"]
    assert isinstance(spm, dict)
    return spm


async def test_native_lease_dump_on_a_live_pool(lab_tmp_path: Path) -> None:
    """Both hosts hold their delta leases, the SPM owns the Paxos leader at the lver it
    reports, and the text form says the same as the JSON form."""
    async with pool(2, directory=lab_tmp_path) as p:
        spm = await p.wait_for_spm(timeout_s=60)
        lver = (await spm_info(p, spm))["spm_lver"]
        config = p.hosts[3 - spm].config

        async def dump() -> dict[str, Any]:
            run = await anyio.to_thread.run_sync(lambda: cli(config, "lease", "dump", "--json"))
            assert run.returncode == 0, run.stderr
            data = json.loads(run.stdout)
            assert isinstance(data, dict)
            return data

        async def both_held() -> bool:
            held = [h for h in (await dump())["hosts"] if h.get("state") == "held"]
            return len(held) == 2

        await until(both_held, 60, "both hosts' delta leases held on disk")
        data = await dump()
        assert data["engine"] == "native"
        assert data["engine_record"]["engine"] == "native"
        area = data["area"]
        assert area["max_hosts"] == MAX_HOSTS and area["sector_size"] in (512, 4096)
        assert area["offset"] <= area["delta_offset"] < area["paxos_offset"] \
            < area["mailbox_offset"]
        assert len(data["hosts"]) == MAX_HOSTS and len(data["dblocks"]) == MAX_HOSTS
        assert not [r for r in data["hosts"] + data["dblocks"] if "error" in r]
        held = {h["host_id"]: h for h in data["hosts"] if h["state"] == "held"}
        assert {i: h["host_name"] for i, h in held.items()} == {
            1: "lab-host-1", 2: "lab-host-2"}
        assert all(h["generation"] >= 1 and h["timestamp_us"] > 0 for h in held.values())
        leader = data["leader"]
        assert not leader["free"]
        assert leader["owner_id"] == spm and leader["lver"] == lver, leader
        assert leader["owner_generation"] == held[spm]["generation"]
        # The SPM's own dblock carries the ballot that won this lver.
        assert data["dblocks"][spm - 1]["lver"] == lver

        text = await anyio.to_thread.run_sync(lambda: cli(config, "lease", "dump"))
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert lines[0] == (f"area offset {area['offset']} sector {area['sector_size']} "
                            f"max_hosts {MAX_HOSTS} mailbox {area['mailbox_offset']}")
        assert lines[1].startswith(
            f"leader: lver {lver} owner host {spm} gen {held[spm]['generation']} ")
        host_lines = [line.split() for line in lines[lines.index("hosts:") + 1:
                                                    lines.index("dblocks:")]]
        # Free, never-used slots are left out without --all.
        assert [(int(f[0]), f[1]) for f in host_lines] == [(1, "held"), (2, "held")]
        assert "'lab-host-1'" in lines[lines.index("hosts:") + 1]
        full = await anyio.to_thread.run_sync(lambda: cli(config, "lease", "dump", "--all"))
        assert full.returncode == 0, full.stderr
        all_lines = full.stdout.splitlines()
        assert lines.index("dblocks:") - lines.index("hosts:") - 1 == 2
        assert all_lines.index("dblocks:") - all_lines.index("hosts:") - 1 == MAX_HOSTS
