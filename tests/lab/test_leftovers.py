"""The leftover check: a session that leaves a loop device or QEMU behind fails, loudly."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from autoextend.lab import leftovers
from autoextend.lab.fixtures import LAB_ROOT_ENV, QemuVmFactory, ThinVolumeFactory
from autoextend.lab.qemu import Drive, VmSpec
from autoextend.lvm import loopdev

MiB = 1 << 20

pytestmark = pytest.mark.slow  # loop devices and QEMU (make unit runs none)


async def test_finds_only_what_is_under_its_roots(
    lab_tmp_path: Path, thin_volume: ThinVolumeFactory, qemu_vm: QemuVmFactory
) -> None:
    vol = await thin_volume(size=8 * MiB, virtual_size=64 * MiB)
    vm = await qemu_vm.start(VmSpec(name="idle", drives=(Drive(vol.device),), machine="none",
                                    paused=True))
    found = {(item.kind, item.ident) for item in leftovers.find_leftovers([str(lab_tmp_path)])}
    assert ("loop", vol.device) in found
    assert ("process", str(vm.pid)) in found
    # another directory (another session) owns none of it
    elsewhere = lab_tmp_path / "other"
    elsewhere.mkdir()
    assert leftovers.find_leftovers([str(elsewhere)]) == []
    await vm.stop()
    await loopdev.detach(vol.device)
    vol.removed = True  # detached by hand above
    vol.path.unlink()
    assert leftovers.find_leftovers([str(lab_tmp_path)]) == []


LEAKY_TEST = '''
import subprocess

def test_leaks_a_loop_device(lab_tmp_path):
    image = lab_tmp_path / "leak.img"
    image.write_bytes(bytes(1 << 20))
    subprocess.run(["losetup", "--find", str(image)], check=True)
'''


def _run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    # the inner session's lab dir goes under pytester's directory, not /var/tmp
    monkeypatch.setenv(LAB_ROOT_ENV, str(pytester.path))
    return pytester.runpytest_subprocess("-p", "autoextend.lab.fixtures",
                                         "-p", "no:cacheprovider")


def test_session_with_a_leak_fails_and_is_cleaned(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_leaky=LEAKY_TEST)
    result = _run_inner(pytester, monkeypatch)
    output = result.stdout.str()
    assert result.ret != 0, output
    result.assert_outcomes(passed=1)
    assert "lab leftover check FAILED" in output
    match = re.search(r"loop (/dev/loop\d+) \((\S+leak\.img)\)", output)
    assert match, output
    device, backing = match.groups()
    listing = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True)
    assert backing not in listing.stdout  # the hook detached it
    assert backing.startswith(str(pytester.path))
    assert list(pytester.path.glob("ae-*"))  # kept for inspection


def test_clean_session_passes_and_removes_its_dir(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_clean="def test_ok(lab_tmp_path):\n    assert lab_tmp_path.is_dir()\n")
    result = _run_inner(pytester, monkeypatch)
    assert result.ret == 0
    assert "lab leftover check FAILED" not in result.stdout.str()
    assert not list(pytester.path.glob("ae-*"))


async def test_finds_a_fault_fs_mount_and_its_process(lab_tmp_path: Path) -> None:
    from autoextend.lab.faultfs import fault_fs

    async with fault_fs(lab_tmp_path / "ffs") as fs:
        found = {(item.kind, item.ident) for item in leftovers.find_leftovers(
            [str(lab_tmp_path)])}
        assert ("mount", str(fs.mountpoint)) in found
        assert ("process", str(fs.process.pid)) in found
    assert leftovers.find_leftovers([str(lab_tmp_path)]) == []
