"""Issue 8 end to end: several autoextend host processes sharing one pool through the
storage mailbox, with the SPM elected by the Disk Paxos lease, and real guests."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import SANLOCK_TIMEOUTS, TIME_SCALE, Pool, pool
from autoextend.lab.sanlockd import unavailable
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev
from autoextend.spm.config import MailboxSettings, mailbox_base
from autoextend.spm.layout import MailboxLayout

pytestmark = pytest.mark.slow
MiB = 1 << 20
# Issue 18: the same runs with the SPM lease held through real sanlock daemons.
ENGINES = pytest.mark.parametrize("engine", ["native", "sanlock"])


def io_timeout(engine: str) -> float:
    if engine == "sanlock":
        reason = unavailable()
        if reason:
            pytest.skip(f"the sanlock daemon cannot run here: {reason}")
        return SANLOCK_TIMEOUTS["io_timeout_s"]
    return 10.0 * TIME_SCALE


def extended_sizes(the_pool: Pool) -> dict[str, list[int]]:
    """Per volume, the sizes every host's monitor reported after each extension."""
    sizes: dict[str, list[int]] = defaultdict(list)
    for host in the_pool.hosts.values():
        for e in host.log_events():
            if e.get("event") == "extended" and e.get("component") == "monitor":
                sizes[e["volume"]].append(int(e["size"]))
    return sizes


async def file_size(the_pool: Pool, lv: str) -> int:
    return (await anyio.Path(the_pool.directory / "volumes" / "demo" / lv).stat()).st_size


def spm_extensions(the_pool: Pool) -> dict[str, list[int]]:
    """Per volume, the sizes the SPMs (every term, every host) changed it to, in log order."""
    sizes: dict[str, list[int]] = defaultdict(list)
    for host in the_pool.hosts.values():
        for e in host.log_events():
            if e.get("event") == "volume extended":
                sizes[e["volume"]].append(int(e["size"]))
    return sizes


async def assert_each_step_once(the_pool: Pool, chunk: int, start: int) -> None:
    """No request lost or applied twice. The SPMs changed every volume exactly one chunk at a
    time, each size once. Every size a host's monitor reported is one of those sizes; a host
    killed with a request in flight may never report it, but the next SPM serves it. The
    volume ends at the last size."""
    applied = spm_extensions(the_pool)
    for name, guest in the_pool.guests.items():
        spm_sizes = sorted(applied[str(guest.volume)])
        assert spm_sizes, f"{name}: no extension applied"
        assert spm_sizes == [start + chunk * (i + 1) for i in range(len(spm_sizes))], (
            name, spm_sizes)
        seen = extended_sizes(the_pool)[str(guest.volume)]
        assert seen and set(seen) <= set(spm_sizes), (name, seen, spm_sizes)
        assert seen == sorted(seen)
        assert await file_size(the_pool, guest.volume.lv) == spm_sizes[-1]


async def watch_from_other_hosts(the_pool: Pool) -> dict[str, tuple[str, int]]:
    """Per guest, a loop device over its volume attached in the name of another host (which
    never runs it), and the volume's size now: that host's view of the volume."""
    watchers = {}
    for name, guest in the_pool.guests.items():
        other = next(h for h in the_pool.hosts if h != guest.host_id)
        device = await the_pool.host_volumes(other).attach(guest.volume)
        watchers[name] = (device, loopdev.size_of(device))
    return watchers


async def assert_views_are_per_host(
    the_pool: Pool, watchers: dict[str, tuple[str, int]]
) -> None:
    """Issue 12, item 1: only the host that runs a guest refreshes its view of the volume.
    The guest's device reaches the volume's final size (its host refreshed after every
    reply); the other host's device keeps the size it was attached with, although that
    host may have been the SPM that grew the file."""
    for name, guest in the_pool.guests.items():
        final = await file_size(the_pool, guest.volume.lv)
        dev = guest.device

        def at_final(dev: str = dev, want: int = final) -> bool:
            return loopdev.size_of(dev) == want

        await until(at_final, 60,
                    f"{name}'s device at the final size (a last refresh may be in flight)",
                    describe=functools.partial(loopdev.size_of, dev))
        device, size_then = watchers[name]
        assert final > size_then, (name, final, size_then)
        assert loopdev.size_of(device) == size_then, (name, device)


def given_up(the_pool: Pool) -> list[dict[str, Any]]:
    """Extensions that timed out or were withdrawn from their mailbox slot, on any host."""
    found = []
    for host in the_pool.hosts.values():
        for e in host.log_events():
            if e.get("event") == "no reply from the SPM" or (
                e.get("event") == "extension failed" and e.get("code") == "timeout"
            ):
                found.append(e)
    return found


@ENGINES
async def test_two_hosts_with_spm_killed_mid_run(lab_tmp_path: Path, engine: str) -> None:
    """At the shipped timing ratios (lab.multihost.TIME_SCALE scales every lease and
    mailbox timeout by one factor): no extension is given up during the failover. With
    sanlock, the killed process's daemon releases the lease and the other host takes over.
    (512 MiB per guest in 64 MiB steps: as many mailbox round trips as 1 GiB in 128 MiB
    steps, in half the guest time.)"""
    io_timeout(engine)
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, engine=engine) as p:
        old_spm = await p.wait_for_spm()
        g1 = await p.start_guest(1, "vm1", GuestJob(mib=512), start_mib=64)
        g2 = await p.start_guest(2, "vm2", GuestJob(mib=512, seed=2), start_mib=64)
        # Let both make progress through the mailbox, then kill the SPM host.
        await until(lambda: min(len(extended_sizes(p).get(str(g.volume), []))
                                for g in (g1, g2)) >= 2, 300, "two extensions of each guest",
                    describe=lambda: extended_sizes(p))
        await p.hosts[old_spm].kill()
        await anyio.sleep(1.0)  # time is the subject: a restart delay, as systemd's
        await p.hosts[old_spm].start()  # as systemd would restart it
        await p.wait_for_spm(timeout_s=120)  # failover: some host holds the lease again
        results = [await g.vm.result(timeout=900) for g in (g1, g2)]
        assert all(r.verified for r in results), results
        statuses = await p.statuses()
        spm_now = await p.wait_for_spm()
        assert statuses[spm_now]["spm"]["spm_lver"] >= 2  # a new term after the kill
        await assert_each_step_once(p, 64 * MiB, 64 * MiB)
        for g in (g1, g2):
            assert len(extended_sizes(p)[str(g.volume)]) >= 6
        assert given_up(p) == []


@ENGINES
async def test_step_down_moves_the_role_while_guests_write(lab_tmp_path: Path,
                                                           engine: str) -> None:
    t = io_timeout(engine)
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, engine=engine) as p:
        old_spm = await p.wait_for_spm()
        g1 = await p.start_guest(1, "vm1", GuestJob(mib=384), start_mib=64, virtual_mib=1024)
        g2 = await p.start_guest(2, "vm2", GuestJob(mib=384, seed=3), start_mib=64,
                                 virtual_mib=1024)
        watchers = await watch_from_other_hosts(p)
        await until(lambda: len(extended_sizes(p).get(str(g1.volume), [])) >= 1, 300,
                    "a first extension of vm1", describe=lambda: extended_sizes(p))
        cli = [sys.executable, "-m", "autoextend", "--config", str(p.hosts[old_spm].config)]
        proc = await anyio.run_process([*cli, "spm", "step-down"], check=False)
        assert proc.returncode == 0, proc.stderr
        assert b"stepped down" in proc.stdout
        new_spm = await p.wait_for_spm(timeout_s=30, not_host=old_spm)
        assert new_spm != old_spm
        # The SPM and lease metrics follow the role.
        new_m = await anyio.to_thread.run_sync(p.hosts[new_spm].scrape)
        old_m = await anyio.to_thread.run_sync(p.hosts[old_spm].scrape)
        assert new_m["autoextend_spm_is_spm"] == 1 and old_m["autoextend_spm_is_spm"] == 0
        assert old_m["autoextend_spm_terms"] == 1 and new_m["autoextend_spm_terms"] == 1
        for m in (new_m, old_m):
            assert 0 <= m["autoextend_lease_renewal_age_seconds"] < 6 * t  # < 6T: healthy
        shown = await anyio.run_process([*cli, "spm", "status", "--json"], check=False)
        assert shown.returncode == 0
        results = [await g.vm.result(timeout=600) for g in (g1, g2)]
        assert all(r.verified for r in results), results
        await assert_each_step_once(p, 64 * MiB, 64 * MiB)
        await assert_views_are_per_host(p, watchers)
        totals = [await anyio.to_thread.run_sync(h.scrape) for h in p.hosts.values()]
        ok = sum(m['autoextend_extend_requests_total{result="ok"}'] for m in totals)
        assert ok == sum(len(v) for v in extended_sizes(p).values())
        assert sum(m["autoextend_mailbox_requests_sent"] for m in totals) >= ok


async def test_vg_full_fails_then_recovers_without_manual_steps(lab_tmp_path: Path) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64) as p:
        await p.wait_for_spm()
        await p.volumes.set_vg_capacity("demo", 64 * MiB)  # only the initial volume fits
        g = await p.start_guest(2, "vm1", GuestJob(mib=160), start_mib=64, virtual_mib=512)
        host = p.hosts[2]

        async def drive() -> dict[str, Any]:
            for vm in (await host.status())["vms"]:
                if vm["drives"]:
                    return {"paused": vm["paused"], **vm["drives"][0]}
            return {"paused": None, "last_error": ""}

        with anyio.fail_after(180):
            while True:
                d = await drive()
                if d["paused"] == "enospc" and "no_space" in d["last_error"]:
                    break
                await anyio.sleep(0.3)  # poll with a deadline (the status call is async)
        await anyio.sleep(2.0)  # time is the subject: it stays paused while the VG is full
        assert (await drive())["paused"] == "enospc"  # stays paused while the VG is full
        cli = [sys.executable, "-m", "autoextend", "--config", str(host.config), "status"]
        shown = await anyio.run_process(cli, check=False)
        assert b"no_space" in shown.stdout and b"PAUSED (enospc)" in shown.stdout
        assert any(e.get("event") == "volume group cannot satisfy the extension"
                   for e in host.log_events())
        await p.volumes.set_vg_capacity("demo", 1024 * MiB)  # space added
        result = await g.vm.result(timeout=300)
        assert result.verified
        status = await host.status()
        assert status["service"]["resumes"] >= 1


async def test_corrupt_mailbox_bytes_are_rejected_counted_and_serving_goes_on(lab_tmp_path: Path) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64) as p:
        spm = await p.wait_for_spm()
        layout = MailboxLayout(mailbox_base(MailboxSettings(max_hosts=16), 0), 512, 16)
        garbage = os.urandom(layout.box_bytes)

        def inject() -> None:
            fd = os.open(p.metadata, os.O_WRONLY)
            try:
                os.pwrite(fd, garbage, layout.request_offset(5))  # a host id nobody uses
                os.pwrite(fd, os.urandom(512), layout.ring_offset(5))
                os.fsync(fd)
            finally:
                os.close(fd)

        await anyio.to_thread.run_sync(inject)
        g = await p.start_guest(2, "vm1", GuestJob(mib=256), start_mib=64, virtual_mib=1024)
        result = await g.vm.result(timeout=300)
        assert result.verified
        status = (await p.hosts[spm].status())["spm"]
        assert status["server"]["corrupt_sectors"] >= 1
        assert any(e.get("event", "").startswith("corrupt") or "corrupt" in e.get("event", "")
                   for e in p.hosts[spm].log_events())
        process = p.hosts[spm].process
        assert process is not None and process.returncode is None


def test_cli_spm_commands_without_service(tmp_path: Any) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\ncontrol_socket = "{tmp_path}/none.sock"\n')
    for args in (["spm", "status"], ["spm", "step-down"]):
        proc = subprocess.run([sys.executable, "-m", "autoextend", "--config", str(cfg), *args],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 1 and "not running" in proc.stderr
        assert "Traceback" not in proc.stderr
