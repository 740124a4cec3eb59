"""loopdev against real loop devices, and its error handling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoextend.errors import VolumeError
from autoextend.lvm import loopdev
from autoextend.lvm.loopdev import LoopError

MiB = 1 << 20


@pytest.mark.parametrize("sector_size", [512, 4096])
@pytest.mark.slow
async def test_attach_grow_detach(lab_tmp_path: Path, sector_size: int) -> None:
    path = lab_tmp_path / "f.img"
    path.write_bytes(b"")
    os.truncate(path, 8 * MiB)
    device = await loopdev.attach(path, sector_size=sector_size)
    try:
        assert device.startswith("/dev/loop")
        assert await loopdev.devices_for(path) == [device]
        info = await loopdev.device_info(device)
        assert info.backing_file == str(path)
        assert info.sector_size == sector_size
        assert loopdev.size_of(device) == 8 * MiB
        os.truncate(path, 24 * MiB)
        assert loopdev.size_of(device) == 8 * MiB
        await loopdev.set_capacity(device)
        assert loopdev.size_of(device) == 24 * MiB
    finally:
        await loopdev.detach(device)
    assert await loopdev.devices_for(path) == []


@pytest.mark.slow
async def test_direct_io_flag(lab_tmp_path: Path) -> None:
    path = lab_tmp_path / "d.img"
    path.write_bytes(b"\0" * MiB)
    device = await loopdev.attach(path, direct_io=True, read_only=True)
    try:
        info = await loopdev.device_info(device)
        assert info.direct_io and info.read_only
    finally:
        await loopdev.detach(device)


@pytest.mark.slow
async def test_attach_missing_file_names_command_and_stderr(lab_tmp_path: Path) -> None:
    missing = lab_tmp_path / "missing.img"
    with pytest.raises(LoopError) as info:
        await loopdev.attach(missing)
    err = info.value
    assert isinstance(err, VolumeError)
    assert err.command[0] == "losetup" and str(missing) in err.command
    assert err.returncode != 0
    assert "No such file" in err.stderr
    assert str(missing) in str(err)


@pytest.mark.slow
async def test_detach_and_set_capacity_of_non_loop_device_fail() -> None:
    with pytest.raises(LoopError) as info:
        await loopdev.detach("/dev/null")
    assert info.value.stderr
    with pytest.raises(LoopError):
        await loopdev.set_capacity("/dev/null")
    with pytest.raises(LoopError):
        await loopdev.device_info("/dev/null")


async def test_bad_sector_size_is_rejected_before_running(lab_tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sector_size"):
        await loopdev.attach(lab_tmp_path / "x", sector_size=1000)


async def test_missing_losetup_is_a_loop_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopdev, "LOSETUP", "/nonexistent/losetup")
    with pytest.raises(LoopError, match="cannot run"):
        await loopdev.list_devices()


def test_parse_list() -> None:
    text = """{"loopdevices": [
        {"name": "/dev/loop3", "back-file": "/var/tmp/a.img (deleted)", "dio": true,
         "log-sec": 4096, "ro": false},
        {"name": "/dev/loop4", "back-file": "/x", "dio": "0", "log-sec": "512", "ro": "1"}]}"""
    rows = loopdev.parse_list(text)
    assert rows[0] == loopdev.LoopDevice("/dev/loop3", "/var/tmp/a.img (deleted)", 4096,
                                         True, False)
    assert rows[1].direct_io is False and rows[1].read_only is True
    assert rows[1].sector_size == 512
    assert loopdev.parse_list("") == []
    for bad in ("{", "[]", '{"loopdevices": [{"dio": 1}]}'):
        with pytest.raises(ValueError):
            loopdev.parse_list(bad)
