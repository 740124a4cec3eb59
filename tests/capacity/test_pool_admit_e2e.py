"""Pool admission in mailbox mode: two ``autoextend run`` processes on a loop VG; the SPM
publishes the committed space of every volume (running or not: no guest here), and
``autoextend pool admit`` with the *other* host's config answers from the record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.multihost import pool
from autoextend.volumes import VolumeRef
from tests.cli.clirun import Result, autoextend

pytestmark = pytest.mark.slow
MiB = 1 << 20
GiB = 1 << 30


def admit(config: Path, size: int) -> Result:
    return autoextend("--config", str(config), "pool", "admit", "--size", str(size),
                      "--vg", "demo", "--json")


async def qemu_img_vsize(path: Path) -> int:
    """The test's own reading of a volume's virtual size."""
    done = await anyio.run_process(["qemu-img", "info", "-U", "--output=json", str(path)],
                                   check=True)
    return int(json.loads(done.stdout)["virtual-size"])


async def test_any_host_answers_from_the_spms_record(lab_tmp_path: Path) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64) as p:
        await p.volumes.set_vg_capacity("demo", GiB)
        for lv, vsize in (("parked1", 2 * GiB), ("parked2", GiB)):
            await p.volumes.create(VolumeRef("demo", lv), 64 * MiB, attach=False)
            await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2",
                                     p.volumes.file_path(VolumeRef("demo", lv)), str(vsize)],
                                    check=True)
        truth = 0
        for lv in ("parked1", "parked2"):
            truth += await qemu_img_vsize(Path(p.volumes.file_path(VolumeRef("demo", lv))))
        assert truth == 3 * GiB
        spm = await p.wait_for_spm()
        other = p.hosts[2 if spm == 1 else 1]
        out: dict[str, Any] = {}
        r = None
        with anyio.fail_after(150):  # the first record after the volumes: one interval (30 s)
            while out.get("committed") != truth:
                r = await anyio.to_thread.run_sync(admit, other.config, GiB)
                out = json.loads(r.stdout) if r.code in (0, 1) else {}
                await anyio.sleep(1.0)  # the SPM writes the record every 30 s: poll for it
        assert r is not None
        assert (out["size"], out["volumes"], out["unknown"]) == (GiB, 2, 0)
        assert out["record"]["spm_host_id"] == spm
        # 4 x 1 GiB = 4 GiB: 1 GiB of room.
        assert r.code == 0 and out["room"] == GiB
        r = await anyio.to_thread.run_sync(admit, other.config, GiB + 1)
        assert r.code == 1 and json.loads(r.stdout)["admit"] is False
        r = await anyio.to_thread.run_sync(admit, other.config, GiB - 1)
        assert r.code == 0
