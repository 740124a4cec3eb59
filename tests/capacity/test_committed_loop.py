"""The committed space of loop volumes (files): ``qemu-img info`` of each file where there
is no tag to read (real qemu-img; a file that holds no qcow2 is unknown, never guessed)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoextend.capacity.committed import CommittedScanner
from autoextend.clock import ManualClock
from autoextend.lvm.listing import LoopLister

pytestmark = pytest.mark.slow
MiB = 1 << 20
GiB = 1 << 30


async def qcow2(path: Path, start: int, vsize: int) -> None:
    with open(path, "wb") as f:
        f.truncate(start)
    await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(vsize)],
                            check=True)


async def test_loop_volumes_are_measured_with_qemu_img(tmp_path: Path) -> None:
    vg = tmp_path / "demo"
    vg.mkdir()
    (vg / ".vg_size").write_text(f"{GiB}\n")
    await qcow2(vg / "disk1", 64 * MiB, 2 * GiB)
    await qcow2(vg / "disk2", 8 * MiB, 5 * GiB + 512)
    with open(vg / "raw", "wb") as raw:
        raw.truncate(16 * MiB)
    (tmp_path / "nosize").mkdir()
    scanner = CommittedScanner(LoopLister(str(tmp_path)), ManualClock())
    [f] = await scanner.scan(["demo", "nosize", "absent"])
    assert (f.vg, f.size, f.committed, f.volumes, f.unknown) == (
        "demo", GiB, 7 * GiB + 512, 3, 1)
    _, detail = await scanner.volumes("demo") or (0, [])
    assert [(v.lv, v.source) for v in detail] == [("disk1", "qemu-img"), ("disk2", "qemu-img"),
                                                   ("raw", "unknown")]
    assert "qemu-img info" in detail[2].why and scanner.probes == 3
    await anyio.run_process(["qemu-img", "resize", "-q", "-f", "qcow2", str(vg / "disk1"),
                             "3G"], check=True)  # the file changed: measured again
    [f] = await scanner.scan(["demo"])
    assert f.committed == 8 * GiB + 512 and scanner.probes == 4
