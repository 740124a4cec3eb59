"""VG capacity for loop volumes, and the VG reserve guard ([policy] vg_reserve_mib)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest

from autoextend import settings as settings_mod
from autoextend.lab.waiting import until
from autoextend.lvm import factory
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.lvm.reserve import ReservedSpace
from autoextend.monitor.local import LocalExtender
from autoextend.monitor.memory import MemoryVolumes
from autoextend.monitor.protocols import OutcomeCode, OutcomeKind
from autoextend.volumes import (
    ExtendResult,
    ExtendsAndRefreshes,
    FileBacked,
    LocalAuthority,
    VgFigures,
    VolumeRef,
    VolumeSpaceError,
    innermost,
)

MiB = 1 << 20


@pytest.fixture
async def loop_root() -> AsyncIterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ae-reserve-", dir="/var/tmp"))
    try:
        yield root
    finally:
        await anyio.run_process(["rm", "-rf", str(root)])


async def test_loop_vg_capacity_limits_growth(loop_root: Path) -> None:
    backend = LoopVolumeBackend(str(loop_root), 4 * MiB, LocalAuthority())
    a, b = VolumeRef("vg", "a"), VolumeRef("vg", "b")
    await backend.create(a, 8 * MiB, attach=False)
    await backend.create(b, 8 * MiB, attach=False)
    await backend.set_vg_capacity("vg", 32 * MiB)
    assert await backend.free_bytes("vg") == 16 * MiB
    assert (await backend.extend(a, 20 * MiB)).size == 20 * MiB
    with pytest.raises(VolumeSpaceError, match="needed"):
        await backend.extend(b, 16 * MiB)  # needs 8 MiB, 4 free
    assert await backend.size(b) == 8 * MiB  # untouched
    await backend.set_vg_capacity("vg", None)
    assert await backend.free_bytes("vg") is None
    assert (await backend.extend(b, 16 * MiB)).changed


async def test_reserve_refuses_growth_into_the_reserve(loop_root: Path) -> None:
    inner = LoopVolumeBackend(str(loop_root), 4 * MiB, LocalAuthority())
    vol = VolumeRef("vg", "a")
    await inner.create(vol, 8 * MiB, attach=False)
    await inner.set_vg_capacity("vg", 64 * MiB)  # 56 MiB free
    guarded = ReservedSpace(inner, {"vg": 40 * MiB}, 4 * MiB)
    assert (await guarded.extend(vol, 24 * MiB)).size == 24 * MiB  # leaves 40 MiB: allowed
    with pytest.raises(VolumeSpaceError, match="reserved"):
        await guarded.extend(vol, 28 * MiB)  # would leave 36 MiB
    outcome = await LocalExtender(guarded).extend(vol, 28 * MiB)
    assert outcome.kind is OutcomeKind.FAILED and outcome.code is OutcomeCode.VG_FULL
    assert await inner.size(vol) == 24 * MiB


class HeldExtends:
    """A FreeSpaceBackend that delegates to ``inner`` but holds every extend until released
    (so two extensions can be made to overlap exactly)."""

    def __init__(self, inner: LoopVolumeBackend) -> None:
        self.inner = inner
        self.release = anyio.Event()
        self.extends_waiting = 0

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        self.extends_waiting += 1
        await self.release.wait()
        return await self.inner.extend(volume, size)

    async def refresh(self, volume: VolumeRef) -> int:
        return await self.inner.refresh(volume)

    async def size(self, volume: VolumeRef) -> int:
        return await self.inner.size(volume)

    def lookup(self, path: str) -> VolumeRef | None:
        return self.inner.lookup(path)

    def device_path(self, volume: VolumeRef) -> str:
        return self.inner.device_path(volume)

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        return await self.inner.reduce(volume, size)

    async def metadata_size(self, volume: VolumeRef) -> int:
        return await self.inner.metadata_size(volume)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        return self.inner.holders_paths(volume)

    async def free_bytes(self, vg: str) -> int | None:
        return await self.inner.free_bytes(vg)

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        return await self.inner.vg_figures(vgs)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_two_concurrent_extends_cannot_both_pass_the_reserve_check(
    loop_root: Path,
) -> None:
    """48 MiB free, 24 MiB reserved: one +16 MiB extension fits, a second would leave 16 MiB.
    The first is held inside the backend's extend while the second runs as far as it can:
    the second must see the first's growth (check and extend are one step per VG)."""
    inner = LoopVolumeBackend(str(loop_root), 4 * MiB, LocalAuthority())
    a, b = VolumeRef("vg", "a"), VolumeRef("vg", "b")
    await inner.create(a, 8 * MiB, attach=False)
    await inner.create(b, 8 * MiB, attach=False)
    await inner.set_vg_capacity("vg", 64 * MiB)  # 48 MiB free
    held = HeldExtends(inner)
    guarded = ReservedSpace(held, {"vg": 24 * MiB}, 4 * MiB)
    results: dict[VolumeRef, object] = {}

    async def extend(volume: VolumeRef) -> None:
        try:
            results[volume] = (await guarded.extend(volume, 24 * MiB)).size
        except VolumeSpaceError as exc:
            results[volume] = exc

    def second_went_as_far_as_it_can() -> bool:
        lock = guarded.locks.get("vg")
        waiting = lock.statistics().tasks_waiting if lock is not None else 0
        return held.extends_waiting == 2 or (held.extends_waiting == 1 and waiting == 1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(extend, a)
        tg.start_soon(extend, b)
        await until(second_went_as_far_as_it_can, 10, "both extensions to run as far as they can",
                    describe=lambda: (held.extends_waiting, results))
        held.release.set()
    sizes = {v: await inner.size(v) for v in (a, b)}
    assert sorted(sizes.values()) == [8 * MiB, 24 * MiB], (sizes, results)
    assert await inner.free_bytes("vg") == 32 * MiB  # the reserve (24 MiB) is intact
    refused = [r for r in results.values() if isinstance(r, VolumeSpaceError)]
    assert len(refused) == 1 and "reserved" in str(refused[0])


async def test_factory_applies_configured_reserves(loop_root: Path) -> None:
    cfg = settings_mod.from_mapping({
        "volumes": {"backend": "loop", "loop_root": str(loop_root), "loop_extent_mib": 4},
        "policy": {"vg_reserve_mib": {"vg": 40}},
    })
    backend = factory.make_pool_backend(
        cfg.volumes, cfg.lvm, LocalAuthority(),
        reserves_mib=cfg.policy.vg_reserve_mib, extent_mib=cfg.policy.extent_mib)
    assert isinstance(backend, ReservedSpace) and backend.reserves == {"vg": 40 * MiB}
    bare = settings_mod.from_mapping({"volumes": {"backend": "loop",
                                                  "loop_root": str(loop_root)}})
    plain = factory.make_pool_backend(
        bare.volumes, bare.lvm, LocalAuthority(),
        reserves_mib=bare.policy.vg_reserve_mib, extent_mib=bare.policy.extent_mib)
    assert isinstance(plain, LoopVolumeBackend)


async def test_bad_vg_size_file_is_an_error_not_unlimited(loop_root: Path) -> None:
    backend = LoopVolumeBackend(str(loop_root), 4 * MiB, LocalAuthority())
    vol = VolumeRef("vg", "a")
    await backend.create(vol, 8 * MiB, attach=False)
    (loop_root / "vg" / ".vg_size").write_text("lots\n")
    with pytest.raises(VolumeSpaceError, match="not a size"):
        await backend.extend(vol, 16 * MiB)


async def test_guard_passes_on_reduce_and_holders_but_no_way_to_grow(loop_root: Path) -> None:
    """Explicit pass-throughs: ``reduce`` and ``holders_paths`` reach the wrapped backend;
    ``extend_and_refresh`` (which the loop backend offers) does not exist on the guard, so the
    local extender cannot skip the reserve check through it."""
    inner = LoopVolumeBackend(str(loop_root), 4 * MiB, LocalAuthority())
    vol = VolumeRef("vg", "a")
    await inner.create(vol, 32 * MiB, attach=False)
    guarded = ReservedSpace(inner, {"vg": 8 * MiB}, 4 * MiB)
    assert isinstance(inner, ExtendsAndRefreshes)
    assert not isinstance(guarded, ExtendsAndRefreshes)
    assert not any(name.startswith("extend_") for name in dir(guarded))
    assert (await guarded.reduce(vol, 10 * MiB)) == ExtendResult(12 * MiB, True)
    assert await inner.size(vol) == 12 * MiB
    assert guarded.holders_paths(vol) == inner.holders_paths(vol) == [inner.file_path(vol)]
    assert not isinstance(guarded, FileBacked)  # only what the wrapped backend is ...
    assert innermost(guarded) is inner and isinstance(innermost(guarded), FileBacked)
    # The VG figures are the wrapped backend's, passed on (the capability, not a probe):
    assert await guarded.vg_figures(["vg"]) == []  # no capacity set: no figures
    await inner.set_vg_capacity("vg", 64 * MiB)
    assert await guarded.vg_figures(["vg", "nope"]) == await inner.vg_figures(["vg"]) == [
        VgFigures("vg", 64 * MiB, 64 * MiB - 12 * MiB)]


async def test_guard_passes_reduce_and_holders_on_to_any_backend() -> None:
    """``reduce`` and ``holders_paths`` are on every volume backend (the protocol): the guard
    passes them on without a probe, to the in-memory backend too."""
    volumes = MemoryVolumes(extent_size=4 * MiB, authority=LocalAuthority())
    vol = VolumeRef("vg", "a")
    await volumes.create(vol, 16 * MiB)
    guarded = ReservedSpace(volumes, {"vg": 8 * MiB}, 4 * MiB)
    assert (await guarded.reduce(vol, 7 * MiB)) == ExtendResult(8 * MiB, True, previous=16 * MiB)
    assert (await guarded.reduce(vol, 12 * MiB)) == ExtendResult(8 * MiB, False)  # never grows
    assert guarded.holders_paths(vol) == ["/dev/vg/a"]
    assert await volumes.size(vol) == 8 * MiB
    assert await guarded.vg_figures(["vg"]) == []  # unlimited: no figures
    await volumes.set_vg_capacity("vg", 32 * MiB)
    assert await guarded.vg_figures(["vg", "other"]) == [VgFigures("vg", 32 * MiB, 24 * MiB)]
