"""One writer for the pool, end to end in local mode (issue 27 item 2): ``autoextend run`` on
real lvm2 (activation off, loop PVs); ``volume create``, ``volume remove`` and ``pool grow``
go through its writer over the control socket. Each op moves ``vg_seqno`` exactly once, a
repeat moves it not at all, the foreign-write audit counts none of them, and bad input is
one line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from autoextend.lvm import loopdev
from autoextend.lvm.vsize import vsize_from_tags
from tests.lvm.support import EXTENT, MiB, Pool, pool

from .servicerun import CLI, poll, service, status_json

__all__ = ["pool"]
pytestmark = pytest.mark.slow


def config(tmp_path: Path, pool: Pool) -> Path:
    pvs = ", ".join(f'"{d}"' for d in pool.devices)
    cfg = tmp_path / "autoextend.toml"
    cfg.write_text(
        f'[service]\nhypervisor = "qmp"\ncontrol_socket = "{tmp_path}/ctl.sock"\n'
        f'[qmp]\nsocket_glob = "{tmp_path}/qmp/*.sock"\n'
        f'[volumes]\nbackend = "lvm"\n'
        f'[lvm]\npvs = [{pvs}]\nvgs = ["{pool.vg}"]\nactivation = "off"\nrunner = "process"\n'
        f'[policy]\nchunk_mib = 64\n'
        f"[capacity]\npoll_interval_s = 0.5\n")
    return cfg


def cli(cfg: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run([*CLI, "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=120, check=False)
    lines = [x for x in (done.stdout + done.stderr).splitlines() if x.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, lines
    return done.returncode, lines[0]


async def test_create_remove_grow_through_the_local_writer(pool: Pool, tmp_path: Path) -> None:
    cfg = config(tmp_path, pool)

    async def seqno() -> int:
        return (await pool.reader.vg(pool.vg)).seqno

    async def run(*args: str) -> tuple[int, str]:
        return await anyio.to_thread.run_sync(lambda: cli(cfg, *args))

    with service(cfg, tmp_path):
        def audited() -> bool:
            st = status_json(cfg)
            return bool(st and st["foreign_writes"] and st["foreign_writes"]["looks"] >= 2)

        await anyio.to_thread.run_sync(poll, audited, 120, "the service and its audit")
        name = f"{pool.vg}/vm1-disk"
        s0 = await seqno()
        code, line = await run("volume", "create", name, "--capacity", "1G", "--size", "10M")
        assert code == 0 and line.startswith(f"{name}: created"), line
        assert await seqno() == s0 + 1
        lv = next(x for x in await pool.reader.lvs(pool.vg) if x.name == "vm1-disk")
        assert lv.size == 3 * EXTENT  # 10 MiB + 10 % = 11 MiB, up to 3 extents
        assert vsize_from_tags(lv.tags) == 1 << 30 and "autoextend.owner=local" in lv.tags
        # The default initial size: one chunk (64 MiB here).
        code, line = await run("volume", "create", f"{pool.vg}/vm2-disk", "--capacity", "1G")
        assert code == 0 and "64.0 MiB" in line, line
        assert await seqno() == s0 + 2
        # The same name again: refused, nothing written.
        code, line = await run("volume", "create", name, "--capacity", "1G")
        assert code == 1 and "exists already" in line, line
        assert await seqno() == s0 + 2

        code, line = await run("volume", "remove", name)
        assert code == 0 and line == f"{name}: removed", line
        assert await seqno() == s0 + 3
        code, line = await run("volume", "remove", name)
        assert code == 0 and "not there" in line, line
        assert await seqno() == s0 + 3

        code, line = await run("pool", "grow")
        assert code == 0 and "no PV of the VG has grown" in line, line
        assert await seqno() == s0 + 3
        with open(pool.files[1], "r+b") as f:
            f.truncate(os.path.getsize(pool.files[1]) + 32 * MiB)
        await loopdev.set_capacity(pool.devices[1])
        code, line = await run("pool", "grow")
        assert code == 0 and "1 PV(s) resized, added 32.00 MiB" in line, line
        assert await seqno() == s0 + 4

        # Bad input: one line each, exit 2 (usage) or 1 (refused), nothing written.
        for args in (("volume", "create", "novg", "--capacity", "1G"),
                     ("volume", "create", name, "--capacity", "1Q"),
                     ("volume", "create", name, "--capacity", "1M", "--size", "2M"),
                     ("volume", "create", "othervg/x", "--capacity", "1G"),
                     ("volume", "remove", f"{pool.vg}/-bad"),
                     ("pool", "grow", "--vg", "othervg")):
            code, line = await run(*args)
            assert code in (1, 2), (args, line)
        assert await seqno() == s0 + 4
        await anyio.sleep(1.5)  # time is the subject: three audit polls after the last op
        st = await anyio.to_thread.run_sync(status_json, cfg)
        assert st is not None and st["foreign_writes"]["total"] == 0
