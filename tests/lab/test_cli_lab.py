"""``autoextend lab`` commands, run through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.cli.lab import parse_size
from autoextend.cli.main import main
from autoextend.lvm import loopdev

MiB = 1 << 20


@given(st.integers(0, 2**40), st.sampled_from(["", "k", "M", "G", "MiB", "g", "KB"]))
def test_parse_size(number: int, unit: str) -> None:
    factor = {"": 1, "k": 1 << 10, "KB": 1 << 10, "M": MiB, "MiB": MiB, "G": 1 << 30,
              "g": 1 << 30}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


@pytest.mark.parametrize("text", ["", "M", "-1M", "1.5G", "12Q", "1 GiBs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "args",
    [["lab"], ["lab", "build-guest"], ["lab", "volume"], ["lab", "volume", "create"],
     ["lab", "volume", "grow"], ["lab", "volume", "remove"], ["lab", "volume", "info"],
     ["lab", "boot"]],
)
def test_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--help"]) == 0
    assert "Usage:" in capsys.readouterr().out


def test_build_guest_is_cached(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "build-guest", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert Path(data["kernel"]).is_file() and Path(data["initrd"]).is_file()


@pytest.mark.slow
def test_volume_lifecycle(lab_tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = lab_tmp_path / "v.img"
    try:
        assert main(["lab", "volume", "create", str(path), "--size", "16M",
                     "--virtual-size", "256M", "--json"]) == 0
        created = json.loads(capsys.readouterr().out)
        assert created["device"].startswith("/dev/loop") and created["size"] == 16 * MiB

        assert main(["lab", "volume", "grow", str(path), "--by", "16M"]) == 0
        assert capsys.readouterr().out == f"{path}: {32 * MiB} bytes\n"
        assert main(["lab", "volume", "info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["size"] == 32 * MiB and info["clean"] is True
        assert info["devices"] == [created["device"]]

        assert main(["lab", "volume", "create", str(path)]) == 2  # exists
    finally:
        assert main(["lab", "volume", "remove", str(path)]) == 0
    assert not path.exists()


def test_volume_grow_user_errors(lab_tmp_path: Path) -> None:
    missing = lab_tmp_path / "missing.img"
    assert main(["lab", "volume", "grow", str(missing), "--by", "1M"]) == 1
    assert main(["lab", "volume", "grow", str(missing)]) == 2
    assert main(["lab", "volume", "create", str(missing), "--size", "12Q"]) == 2


@pytest.mark.slow
def test_boot_prints_result(lab_tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = lab_tmp_path / "b.img"
    assert main(["lab", "volume", "create", str(path), "--size", "32M",
                 "--virtual-size", "64M"]) == 0
    capsys.readouterr()
    try:
        assert main(["lab", "boot", "--volume", str(path), "--mib", "8",
                     "--workdir", str(lab_tmp_path / "vm"), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["verified"] is True and result["written_mib"] == 8
        # a verify with another seed fails: exit 1
        assert main(["lab", "boot", "--volume", str(path), "--mib", "8", "--seed", "2",
                     "--verify-only", "--workdir", str(lab_tmp_path / "vm2")]) == 1
    finally:
        assert main(["lab", "volume", "remove", str(path)]) == 0
    assert anyio.run(loopdev.devices_for, path) == []
