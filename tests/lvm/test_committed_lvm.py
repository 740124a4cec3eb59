"""Pool admission on real lvm2 (activation off, loop PVs): the SPM's committed space from
the LVs' autoextend.vsize tags (an untagged LV is unknown: its device cannot be opened
here), published in a metadata-area file, and ``autoextend pool admit`` at, below and
above the ratio, each figure checked against lvm2's own ``lvs`` report."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import anyio
import pytest

from autoextend.capacity import committed_record as cr
from autoextend.capacity.admission import limit_of
from autoextend.capacity.committed import CommittedPublisher, CommittedScanner
from autoextend.capacity.config import CapacitySettings
from autoextend.clock import MonotonicClock
from autoextend.directio import open_storage
from autoextend.lvm.listing import LvmLister
from autoextend.lvm.lvmconf import render_config
from autoextend.lvm.vsize import VSIZE_TAG_PREFIX, vsize_tag
from autoextend.volumes import LocalAuthority, VolumeRef
from tests.cli.clirun import Result, autoextend

from .support import MiB, Pool

pytestmark = pytest.mark.slow
GiB = 1 << 30
RATIO = 4.0


async def lvs_truth(pool: Pool) -> tuple[int, int, int]:
    """(vg_size, the tags' sum, untagged LVs) from lvm2's own report, parsed here."""
    done = await anyio.run_process(
        ["lvm", "lvs", "--config", render_config(pool.config), "--readonly",
         "--reportformat", "json", "--units", "b", "--nosuffix", "-o",
         "lv_name,lv_tags,vg_size", pool.vg], check=True)
    rows = json.loads(done.stdout)["report"][0]["lv"]
    total, untagged = 0, 0
    for row in rows:
        tags = [t for t in row["lv_tags"].split(",") if t.startswith(VSIZE_TAG_PREFIX)]
        if tags:
            total += int(tags[0][len(VSIZE_TAG_PREFIX):])
        else:
            untagged += 1
    return int(rows[0]["vg_size"]), total, untagged


def admit(conf: Path, vg: str, size: int, *extra: str) -> tuple[Result, dict[str, object]]:
    r = autoextend("--config", str(conf), "pool", "admit", "--size", str(size), "--vg", vg,
                   "--json", *extra)
    assert r.code in (0, 1), r.stderr
    return r, json.loads(r.stdout)


async def test_admission_at_below_and_above_the_ratio_matches_lvs(pool: Pool) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="autoextend-admit-", dir="/var/tmp"))
    storage = None
    try:
        meta = workdir / "meta"
        with open(meta, "wb") as f:
            f.truncate(8 * MiB)
        conf = workdir / "pool.toml"
        conf.write_text(f'[lease]\npath = "{meta}"\n[capacity]\n'
                        f"max_overcommit_ratio = {RATIO}\n")
        w = pool.writer
        await w.create_lv(VolumeRef(pool.vg, "tagged1"), 64 * MiB, virtual_size=GiB)
        await w.create_lv(VolumeRef(pool.vg, "tagged2"), 8 * MiB, virtual_size=1536 * MiB)
        await w.create_lv(VolumeRef(pool.vg, "untagged"), 32 * MiB)
        storage = await open_storage(str(meta))
        agent = SimpleNamespace(storage=storage, lease=SimpleNamespace(term=LocalAuthority()),
                                host_id=1)
        clock = MonotonicClock()
        pub = CommittedPublisher(agent, CommittedScanner(LvmLister(pool.reader), clock),
                                 CapacitySettings(), [pool.vg], 0, clock)
        assert await pub.publish_once()
        _, detail = await pub.scanner.volumes(pool.vg) or (0, [])
        assert [(v.lv, v.vsize, v.source) for v in detail] == [
            ("tagged1", GiB, "tag"), ("tagged2", 1536 * MiB, "tag"),
            ("untagged", None, "unknown")]
        assert "no device to open on this host" in detail[2].why

        vg_size, tagged, untagged = await lvs_truth(pool)
        assert (tagged, untagged) == (2560 * MiB, 1)
        room = limit_of(vg_size, RATIO) - tagged
        assert room > 0
        r, out = await anyio.to_thread.run_sync(admit, conf, pool.vg, 64 * MiB)
        assert r.code == 1 and out["unknown"] == 1 and "unknown virtual size" in str(
            out["reason"])  # the untagged LV's device cannot be opened: never guessed
        assert (out["size"], out["committed"], out["volumes"]) == (vg_size, tagged, 3)
        r, out = await anyio.to_thread.run_sync(admit, conf, pool.vg, room, "--allow-unknown")
        assert r.code == 0 and out["room"] == room

        await w.change_tags(VolumeRef(pool.vg, "untagged"), add=[vsize_tag(256 * MiB)])
        assert await pub.publish_once()
        vg_size, tagged, untagged = await lvs_truth(pool)
        assert untagged == 0
        room = limit_of(vg_size, RATIO) - tagged
        for size, code in ((room, 0), (room - 1, 0), (room // 2, 0), (room + 1, 1),
                           (room + GiB, 1)):
            r, out = await anyio.to_thread.run_sync(admit, conf, pool.vg, size)
            assert r.code == code, (size, room, out)
            assert (out["size"], out["committed"], out["unknown"]) == (vg_size, tagged, 0)
            assert out["ratio"] == round(tagged / vg_size, 4)
        raw = await storage.read(cr.record_offset(0, storage.sector_size), storage.sector_size)
        rec = cr.decode(raw)
        assert rec is not None and rec.seq == 2 and rec.vgs[0].volumes == 3
    finally:
        if storage is not None:
            await storage.close()
        shutil.rmtree(workdir, ignore_errors=True)
