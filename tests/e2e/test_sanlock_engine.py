"""Issue 18: the sanlock lease engine against real sanlock daemons (one per host, each in its
own mount namespace, autoextend/lab/sanlockd.py), served to real ``autoextend run`` hosts;
and the engine record that keeps a native host and a sanlock host off one pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab import proc
from autoextend.lab.multihost import SANLOCK_TIMEOUTS, Pool, pool
from autoextend.lab.sanlockd import unavailable
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow
T = SANLOCK_TIMEOUTS["io_timeout_s"]


def need_sanlock() -> None:
    reason = unavailable()
    if reason:
        pytest.skip(f"the sanlock daemon cannot run here: {reason}")


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoextend", "--config", str(config), *args],
                          capture_output=True, text=True, check=False, timeout=60)


async def spm_info(p: Pool, host_id: int) -> dict[str, Any]:
    status = await p.hosts[host_id].status()
    spm = status["spm"]
    assert isinstance(spm, dict)
    return spm


def events(p: Pool, host_id: int, name: str) -> list[dict[str, Any]]:
    return [e for e in p.hosts[host_id].log_events() if e.get("event") == name]


def other_engine_config(p: Pool, directory: Path, engine: str) -> Path:
    """Host 1's config turned into a third host's with lease.engine = ``engine``."""
    config = p.hosts[1].config.read_text()
    host_dir = directory / f"{engine}-host"
    host_dir.mkdir()
    path = host_dir / "autoextend.toml"
    path.write_text(config.replace('engine = "sanlock"', f'engine = "{engine}"')
                    .replace('engine = "native"', f'engine = "{engine}"')
                    .replace("host_id = 1", "host_id = 3")
                    .replace(str(p.hosts[1].directory), str(host_dir))
                    .replace("enabled = true", "enabled = false"))
    return path


async def test_sanlock_pool_dump_status_crash_takeover_and_fence(lab_tmp_path: Path) -> None:
    """Two hosts, two daemons. The SPM's lease is on disk (``lease dump``) and in ``spm
    status``; a host configured for the native engine refuses the pool; a SIGKILLed SPM process loses the lease at once (its daemon releases it) and
    the other host takes over with a higher lver; the restarted host rejoins; an SPM whose
    daemon stops renewing fences itself (scope cancelled) before 8T have passed."""
    need_sanlock()
    async with pool(2, directory=lab_tmp_path, engine="sanlock") as p:
        spm = await p.wait_for_spm(timeout_s=60)
        other = 3 - spm
        info = await spm_info(p, spm)
        assert info["engine"] == "sanlock" and info["is_spm"]
        lver = info["spm_lver"]

        async def both_live() -> bool:
            hosts = (await spm_info(p, other))["hosts"]
            return all(hosts.get(str(h), {}).get("state") == "live" for h in (1, 2))

        await until(both_live, 60, "the other host sees both hosts LIVE through sanlock")
        dump = cli(p.hosts[other].config, "lease", "dump", "--json")
        assert dump.returncode == 0, dump.stderr
        data = json.loads(dump.stdout)
        assert data["engine"] == "sanlock"
        assert data["engine_record"]["engine"] == "sanlock"
        assert data["leader"]["owner_id"] == spm and data["leader"]["lver"] == lver
        held = {h["host_id"]: h["host_name"] for h in data["hosts"] if h.get("state") == "held"}
        assert held == {1: "lab-host-1", 2: "lab-host-2"}, data["hosts"][:3]
        text = cli(p.hosts[other].config, "lease", "dump")
        assert f"leader: lver {lver} owner host {spm}" in text.stdout

        shown = cli(p.hosts[other].config, "spm", "status")
        assert shown.returncode == 0 and f"SPM: host {spm} (lver {lver})" in shown.stdout
        assert "lease engine sanlock" in shown.stdout

        # A host configured for the native engine refuses this pool: one line, exit 1.
        run = await anyio.to_thread.run_sync(
            lambda: cli(other_engine_config(p, lab_tmp_path, "native"), "run"))
        assert run.returncode == 1, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
        assert 'formatted for lease.engine = "sanlock"' in lines[0]
        assert 'configured for lease.engine = "native"' in lines[0]
        assert await p.spm_host() == spm  # the pool goes on

        # The SPM process dies: its daemon releases the resource, the other host takes over
        # within a few acquire polls (no 8T + W wait: the host itself is alive).
        await p.hosts[spm].kill()
        new = await p.wait_for_spm(timeout_s=10 * T, not_host=spm)
        assert new == other
        assert (await spm_info(p, new))["spm_lver"] > lver
        await p.hosts[spm].start()  # systemd would restart it; the lockspace is still joined

        async def rejoined() -> bool:
            return bool((await spm_info(p, spm))["lease_health"] == "ok")

        await until(rejoined, 60, "the restarted host is joined again")

        # The SPM's daemon stops (SIGSTOP): no renewal is seen any more. The SPM scope is
        # cancelled and the role ends before the daemon's own recovery (8T after its last
        # renewal), long before another host could take over (8T + W = 76 s).
        daemon = p.sanlock_daemons[new]
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            async def fenced() -> bool:
                return not (await spm_info(p, new))["is_spm"]

            await until(fenced, 8 * T + 10, "the SPM fences itself once renewals stop")
            assert events(p, new, "SPM term fenced")
            assert await p.spm_host() is None  # nobody else holds it yet
        finally:
            os.kill(daemon.pid, signal.SIGCONT)


def host_toml(directory: Path, meta: Path, engine: str) -> Path:
    cfg = directory / f"{engine}.toml"
    cfg.write_text(f"""\
[service]
hypervisor = "qmp"
extender = "mailbox"
control_socket = "{directory}/control.sock"
[qmp]
socket_glob = "{directory}/qmp/*.sock"
[volumes]
backend = "loop"
loop_root = "{directory}/volumes"
[lvm]
vgs = ["demo"]
[lease]
engine = "{engine}"
path = "{meta}"
host_id = 1
max_hosts = 16
io_timeout_s = 2.0
[mailbox]
max_hosts = 16
""")
    return cfg


async def formatted(directory: Path, engine: str) -> Path:
    meta = directory / "metadata"
    await anyio.to_thread.run_sync(lambda: meta.write_bytes(bytes(16 << 20)))
    await proc.run([sys.executable, "-m", "autoextend", "lease", "init", "--path", str(meta),
                    "--max-hosts", "16", "--engine", engine, "--yes"])
    return meta


async def test_a_sanlock_host_refuses_a_native_pool(lab_tmp_path: Path) -> None:
    """The engine recorded by ``lease init`` stops a host configured for the other engine at
    start (before it talks to any daemon), with one line and exit 1."""
    cfg = host_toml(lab_tmp_path, await formatted(lab_tmp_path, "native"), "sanlock")
    run = await anyio.to_thread.run_sync(lambda: cli(cfg, "run"))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert 'formatted for lease.engine = "native"' in line
    assert 'configured for lease.engine = "sanlock"' in line


async def test_a_sanlock_host_without_a_daemon_says_so_in_one_line(lab_tmp_path: Path) -> None:
    """``lease init`` formats the sanlock leases without a daemon (libsanlock's direct
    calls); ``run`` then needs one and names the socket it tried."""
    need_sanlock()
    cfg = host_toml(lab_tmp_path, await formatted(lab_tmp_path, "sanlock"), "sanlock")
    env = {**os.environ, "SANLOCK_RUN_DIR": str(lab_tmp_path / "no-daemon")}
    run = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "autoextend", "--config", str(cfg), "run"], env=env,
        capture_output=True, text=True, check=False, timeout=60))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "no sanlock daemon answers on" in lines[0], run.stderr
