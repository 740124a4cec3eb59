"""Thin volumes: create, grow while attached, remove, and cleanup on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoextend.lab import thinvol
from autoextend.lab.errors import CommandError
from autoextend.lvm import loopdev

MiB = 1 << 20


@pytest.mark.slow
async def test_create_grow_remove(lab_tmp_path: Path) -> None:
    path = lab_tmp_path / "v.img"
    async with thinvol.thin_volume(path, 64 * MiB, 1 << 30) as vol:
        assert await loopdev.devices_for(path) == [vol.device]
        assert vol.size == 64 * MiB and vol.device_size() == 64 * MiB
        check = await vol.check()
        assert check.clean and check.allocated_clusters == 0
        assert await vol.grow(by=32 * MiB) == 96 * MiB
        assert vol.device_size() == 96 * MiB
        assert await vol.grow(to=80 * MiB) == 96 * MiB  # never shrinks
        assert vol.device_size() == 96 * MiB
        with pytest.raises(ValueError):
            await vol.grow(to=100 * MiB + 1)
    assert not path.exists()
    assert await loopdev.devices_for(path) == []


@pytest.mark.slow
async def test_cleanup_when_the_block_fails(lab_tmp_path: Path) -> None:
    path = lab_tmp_path / "f.img"
    with pytest.raises(RuntimeError):
        async with thinvol.thin_volume(path, 8 * MiB, 64 * MiB):
            raise RuntimeError("boom")
    assert not path.exists()


@pytest.mark.slow
async def test_cleanup_when_qemu_img_fails(lab_tmp_path: Path) -> None:
    path = lab_tmp_path / "tiny.img"
    # qemu-img rejects a virtual size beyond qcow2's limit, after the device is attached
    with pytest.raises(CommandError) as info:
        await thinvol.create(path, 8 * MiB, 1 << 62)
    assert info.value.command[:2] == ["qemu-img", "create"]
    assert not path.exists()


async def test_existing_file_is_never_reused(lab_tmp_path: Path) -> None:
    path = lab_tmp_path / "taken.img"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        await thinvol.create(path, 8 * MiB, 64 * MiB)
    assert path.read_bytes() == b"precious"


@pytest.mark.slow
async def test_remove_twice_is_harmless(lab_tmp_path: Path) -> None:
    vol = await thinvol.create(lab_tmp_path / "r.img", 8 * MiB, 64 * MiB)
    await thinvol.remove(vol)
    await thinvol.remove(vol)
    assert vol.removed


def test_parse_check() -> None:
    check = thinvol.parse_check('{"check-errors": 0, "leaks": 2, "allocated-clusters": 5}')
    assert not check.clean and check.leaks == 2 and check.allocated_clusters == 5
    with pytest.raises(ValueError):
        thinvol.parse_check("not json")
