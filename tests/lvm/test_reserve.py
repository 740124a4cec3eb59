"""VG capacity for loop volumes, and the VG reserve guard ([policy] vg_reserve_mib)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from autoextend import settings as settings_mod
from autoextend.lvm import factory
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.lvm.reserve import ReservedSpace
from autoextend.monitor.local import LocalExtender
from autoextend.monitor.protocols import OutcomeKind
from autoextend.volumes import LocalAuthority, VolumeRef, VolumeSpaceError

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
    assert outcome.kind is OutcomeKind.FAILED and outcome.code == "vg_full"
    assert await inner.size(vol) == 24 * MiB


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
