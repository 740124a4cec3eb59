"""The honest cap (issue 30 item 3): a fully allocated image, its persistent bitmaps and one
cluster; the pure formula, its agreement with qemu-img, and the monitor using it."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.lab.waiting import until
from autoextend.monitor import policy
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.policy import MiB
from autoextend.qemuimg import qemu_img_fully_allocated
from tests.monitor.rig import VOL, Rig

KiB = 1 << 10
clusters = st.sampled_from([512, 4 * KiB, 64 * KiB, 1 << 20, 2 << 20])
granularities = st.sampled_from([512, 4 * KiB, 64 * KiB, 1 << 20, 1 << 26])
names = st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=40)
bitmap_sets = st.lists(st.tuples(names, granularities), max_size=8, unique_by=lambda b: b[0])


@given(st.integers(1, 1 << 44), clusters, bitmap_sets)
def test_bitmaps_take_whole_clusters_and_grow_with_each_bitmap(
        capacity: int, cluster: int, bitmaps: list[tuple[str, int]]) -> None:
    size = policy.bitmap_bytes(capacity, cluster, tuple(bitmaps))
    assert size % cluster == 0
    if not bitmaps:
        assert size == 0
    else:
        # each bitmap: at least one data cluster and one table cluster; one directory
        assert size >= (2 * len(bitmaps) + 1) * cluster
        fewer = policy.bitmap_bytes(capacity, cluster, tuple(bitmaps[:-1]))
        assert fewer < size


@given(st.integers(1, 1 << 50), st.integers(0, 1 << 40), clusters,
       st.sampled_from([MiB, 4 * MiB, 128 * MiB]))
def test_measured_cap_holds_everything_and_is_extent_aligned(
        full: int, bitmaps: int, cluster: int, extent: int) -> None:
    cap = policy.measured_cap(full, bitmaps, cluster, extent)
    assert cap % extent == 0
    assert full + bitmaps + cluster <= cap < full + bitmaps + cluster + extent


async def _qemu_img_measure(image: Path, cluster: int) -> dict[str, int]:
    done = await anyio.run_process(["qemu-img", "measure", "--output=json", "-O", "qcow2",
                                    "-o", f"cluster_size={cluster}", str(image)])
    return dict(json.loads(done.stdout))


@pytest.mark.slow  # qemu-img
@pytest.mark.parametrize(("capacity", "cluster", "bitmaps"), [
    (1 << 30, 64 * KiB, (("b0", 64 * KiB), ("longername1", 4 * KiB))),
    (5 << 30, 64 * KiB, (("a", 512),)),
    (3 * (1 << 30) + 12345 * 512, 4 * KiB, (("x", 4 * KiB), ("y", 1 << 20), ("zz", 64 * KiB))),
    (100 << 20, 2 << 20, (("incremental-0001", 64 * KiB),)),
])
async def test_formula_matches_qemu_img_measure(
        tmp_path: Path, capacity: int, cluster: int, bitmaps: tuple[tuple[str, int], ...]
) -> None:
    image = tmp_path / "disk.qcow2"
    await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                             f"cluster_size={cluster}", str(image), str(capacity)])
    for name, granularity in bitmaps:
        await anyio.run_process(["qemu-img", "bitmap", "--add", "-g", str(granularity),
                                 str(image), name])
    measured = await _qemu_img_measure(image, cluster)
    assert policy.bitmap_bytes(capacity, cluster, bitmaps) == measured["bitmaps"]
    assert await qemu_img_fully_allocated(capacity, cluster) == measured["fully-allocated"]


def _fake_measure(calls: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    async def measure(capacity: int, cluster: int) -> int | None:
        calls.append((capacity, cluster))
        return capacity + 3840 * KiB  # a stand-in for qemu-img's fully-allocated
    return measure


async def test_monitor_caps_at_the_measure_and_moves_the_cap_with_the_bitmaps() -> None:
    calls: list[tuple[int, int]] = []
    rig = Rig(measure_full=_fake_measure(calls))
    rig.hv.add_vm("vm1", {"vda": (VOL, 256 * MiB, 300 * MiB)})
    drive = rig.hv.vms["vm1"].drives["vda"]
    drive.cluster_size = 64 * KiB
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: rig.state() is ThresholdState.SET)
        # cap = round_up(300 MiB + 3.75 MiB + 64 KiB, 4 MiB) = 304 MiB (the factor: 332)
        assert rig.monitor.snapshot()[0]["drives"][0]["cap"] == 304 * MiB
        rig.hv.write("vm1", "vda", 260 * MiB)  # past the end: extended, at most to the cap
        await until(lambda: rig.state() is ThresholdState.DISABLED, describe=rig.describe)
        assert rig.volumes.sizes[VOL] == 304 * MiB
        # The write fits now: the guest is resumed (at its cap, but with room).
        await until(lambda: rig.monitor.snapshot()[0]["state"] == "running",
                    describe=rig.describe)
        rig.hv.write("vm1", "vda", 46 * MiB)  # to 306 MiB, past the cap: paused there
        await until(lambda: str(rig.monitor.snapshot()[0]["paused"]).startswith(
            "enospc, at cap"), describe=rig.describe)
        assert rig.monitor.snapshot()[0]["paused"] == (
            f"enospc, at cap: vda image end {306 * MiB} B, bitmaps 0 B, cap {304 * MiB} B")
        assert rig.volumes.sizes[VOL] == 304 * MiB
        assert calls == [(300 * MiB, 64 * KiB)]  # measured once
        # A persistent bitmap (granularity 512: 75 KiB of data) is added: the cap moves at
        # the next look (no new measure), and the drive grows to it.
        drive.bitmaps = (("full", 512),)
        extra = policy.bitmap_bytes(300 * MiB, 64 * KiB, drive.bitmaps)
        assert extra == 4 * 64 * KiB  # 2 data clusters + 1 table + 1 directory
        await rig.advance(1.0)
        await until(lambda: rig.volumes.sizes[VOL] == 308 * MiB, describe=rig.describe)
        assert rig.monitor.snapshot()[0]["drives"][0]["cap"] == 308 * MiB
        assert calls == [(300 * MiB, 64 * KiB)]
        tg.cancel_scope.cancel()
