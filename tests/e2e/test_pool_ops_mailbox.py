"""One writer for the pool in mailbox mode (issue 27 item 2), on real lvm2 (activation off,
loop PVs shared by two ``autoextend run`` hosts, as a shared LUN is).

From the host that is not the SPM: ``volume create`` (also of a snapshot LV, ``--parent``),
``volume remove`` and ``pool grow`` are served by the SPM, each moves ``vg_seqno`` exactly
once, and ``journal dump`` lists each. Then the SPM is SIGKILLed
right after its ``lvcreate`` committed and before its reply (its lvm2 binary is a wrapper
that kills its parent once a marker file exists): the other host takes over, serves the
request still in its box, finds the LV its request made, and answers OK. One LV, one
commit, nothing half made."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import anyio
import pytest

from autoextend import control
from autoextend.errors import AutoextendError
from autoextend.lab.multihost import (
    MAX_HOSTS,
    META_SIZE,
    TIME_SCALE,
    HostProcess,
    free_port,
    host_config,
)
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev
from autoextend.volumes import VolumeRef
from tests.lvm.support import MiB, Pool, pool

__all__ = ["pool"]
pytestmark = pytest.mark.slow
HOT = 2.0  # the SPM's hot window: a remove waits that long after a takeover

WRAPPER = """#!/bin/bash
if [ "$1" = lvcreate ] && [ -e {mark} ]; then
  rm -f {mark}
  {lvm} "$@"; rc=$?
  kill -9 $PPID
  exit $rc
fi
exec {lvm} "$@"
"""


def lvm_config(text: str, pool: Pool, wrapper: Path) -> str:
    """The lab host's config on real lvm2 instead of the loop backend."""
    head, _, rest = text.partition("[volumes]")
    _, _, tail = rest.partition("[lease]")
    pvs = ", ".join(f'"{d}"' for d in pool.devices)
    return (f'{head}[volumes]\nbackend = "lvm"\n\n[lvm]\npvs = [{pvs}]\nvgs = ["{pool.vg}"]\n'
            f'activation = "off"\nrunner = "process"\nlvm_binary = "{wrapper}"\n\n'
            f"[lease]{tail}").replace("request_timeout_s = ", "request_timeout_s = 120 #")


async def cli(cfg: Path, *args: str) -> tuple[int, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "autoextend", "--config", str(cfg), *args], check=False)
    lines = [x for x in (done.stdout.decode() + done.stderr.decode()).splitlines()
             if x.strip()]
    assert "Traceback" not in done.stderr.decode() and len(lines) == 1, lines
    return done.returncode, lines[0]


@pytest.mark.timeout(900)
async def test_ops_from_a_non_spm_host_and_a_create_across_an_spm_kill(
        pool: Pool, lab_tmp_path: Path) -> None:
    lvm = shutil.which("lvm") or "/usr/sbin/lvm"
    meta = lab_tmp_path / "metadata"
    with open(meta, "wb") as f:
        f.truncate(META_SIZE)
    await anyio.run_process([sys.executable, "-m", "autoextend", "lease", "init", "--path",
                             str(meta), "--max-hosts", str(MAX_HOSTS), "--engine", "native",
                             "--yes"])
    hosts: dict[int, HostProcess] = {}
    try:
        for host_id in (1, 2):
            host_dir = lab_tmp_path / f"host{host_id}"
            (host_dir / "qmp").mkdir(parents=True)
            wrapper = host_dir / "lvm"
            wrapper.write_text(WRAPPER.format(mark=host_dir / "kill-after-lvcreate", lvm=lvm))
            wrapper.chmod(0o755)
            cfg = host_dir / "autoextend.toml"
            cfg.write_text(lvm_config(host_config(
                lab_tmp_path, host_dir, host_id, time_scale=TIME_SCALE, chunk_mib=64,
                poll_interval_s=1.0, metrics_port=free_port(), hot_window_s=HOT), pool,
                wrapper))
            hosts[host_id] = HostProcess(host_id, host_dir, cfg)
        for host in hosts.values():
            await host.start()

        async def spm() -> int | None:
            for host_id, host in hosts.items():
                if host.process is None or host.process.returncode is not None:
                    continue
                try:
                    if (await host.status()).get("spm", {}).get("is_spm"):
                        return host_id
                except AutoextendError:
                    continue
            return None

        await until(spm, 120, "an SPM")
        spm_id = await spm()
        assert spm_id is not None
        asker = 3 - spm_id
        cfg = hosts[asker].config

        async def joined() -> bool:
            mailbox = ((await hosts[asker].status()).get("spm") or {})
            return mailbox.get("lease_health") == "ok"

        await until(joined, 120, "the asking host to join")

        async def seqno() -> int:
            return (await pool.reader.vg(pool.vg)).seqno

        s0 = await seqno()
        code, line = await cli(cfg, "volume", "create", f"{pool.vg}/a", "--capacity", "1G",
                               "--size", "8M")
        assert code == 0 and "created" in line, line
        assert await seqno() == s0 + 1
        lv = await pool.reader.lv(VolumeRef(pool.vg, "a"))
        assert f"autoextend.owner=host-{asker}" in lv.tags
        assert any(t.startswith(f"autoextend.request={asker}.") for t in lv.tags)
        # A snapshot LV on "a": one commit, tagged with its parent; asked again, nothing.
        code, line = await cli(cfg, "volume", "create", f"{pool.vg}/a-snap", "--parent", "a",
                               "--capacity", "1G")
        assert code == 0 and "created on parent a" in line, line
        assert await seqno() == s0 + 2
        snap = await pool.reader.lv(VolumeRef(pool.vg, "a-snap"))
        assert "autoextend.parent=a" in snap.tags
        code, line = await cli(cfg, "volume", "create", f"{pool.vg}/b-snap", "--parent", "b",
                               "--capacity", "1G")
        assert code == 1 and "parent" in line and "does not exist" in line, line
        assert await seqno() == s0 + 2
        await anyio.sleep(HOT)  # time is the subject: the SPM's term is older than HOT
        for name in ("a-snap", "a"):
            code, line = await cli(cfg, "volume", "remove", f"{pool.vg}/{name}")
            assert code == 0 and line.endswith("removed"), line
        assert await seqno() == s0 + 4
        os.truncate(pool.files[2], os.path.getsize(pool.files[2]) + 16 * MiB)
        await loopdev.set_capacity(pool.devices[2])
        code, line = await cli(cfg, "pool", "grow")
        assert code == 0 and "1 PV(s) resized" in line, line
        assert await seqno() == s0 + 5
        # Every op is in the SPM's journal, read from the asking host.
        done = await anyio.run_process(
            [sys.executable, "-m", "autoextend", "--config", str(cfg), "journal", "dump",
             "--json"])
        records = json.loads(done.stdout)["records"]
        assert [(r["op"], r["volume"], r["host"]) for r in records] == [
            ("create", f"{pool.vg}/a", asker), ("create", f"{pool.vg}/a-snap", asker),
            ("remove", f"{pool.vg}/a-snap", asker), ("remove", f"{pool.vg}/a", asker),
            ("grow-pv", f"{pool.vg}/", asker)]
        # The SPM dies right after its lvcreate committed, before it could reply.
        (hosts[spm_id].directory / "kill-after-lvcreate").touch()
        code, line = await cli(cfg, "volume", "create", f"{pool.vg}/b", "--capacity", "1G")
        killed = hosts[spm_id].process
        assert killed is not None and killed.returncode == -9, "no SPM kill mid-create"
        assert code == 0 and "already created by this request" in line, line
        assert await spm() == asker
        assert await seqno() == s0 + 6
        names = [x.name for x in await pool.reader.lvs(pool.vg)]
        assert names == ["b"]
        status = await control.call(hosts[asker].control_socket, "status", wait_s=5)
        assert isinstance(status, dict)
    finally:
        for host in hosts.values():
            await host.stop()
