"""make unit's guard: a test that starts QEMU, libvirtd, lvm2, losetup, ... fails (mark it slow)."""

from __future__ import annotations

import pytest

from autoextend.lab.unitguard import forbidden

GUARDED = """
import subprocess
import pytest

def test_runs_losetup() -> None:
    subprocess.run(["losetup", "--version"], capture_output=True)

def test_runs_qemu_by_path_and_swallows_the_error() -> None:
    try:
        subprocess.run(["/usr/bin/qemu-system-x86_64", "--version"], capture_output=True)
    except Exception:
        pass  # the code under test hides it: the test still fails

def test_a_child_shell_runs_lvm() -> None:
    subprocess.run(["sh", "-c", "lvm version"], capture_output=True)

def test_a_shell_command_line_runs_losetup() -> None:
    subprocess.run("losetup --list", shell=True, capture_output=True)

def test_a_stand_in_script_is_fine(tmp_path) -> None:
    fake = tmp_path / "lvm"
    fake.write_text("#!/bin/sh\\necho fake\\n")
    fake.chmod(0o755)
    assert subprocess.run([str(fake)], capture_output=True, text=True).stdout == "fake\\n"

def test_other_programs_are_fine() -> None:
    assert subprocess.run(["true"]).returncode == 0
"""


def test_forbidden_names_real_programs_only() -> None:
    assert forbidden("qemu-system-x86_64") and forbidden("/usr/bin/qemu-system-aarch64")
    assert forbidden("losetup") and forbidden("/sbin/lvm") and forbidden("promtool")
    assert not forbidden("/tmp/pytest-of-root/x/lvm") and not forbidden("qemu-img")
    assert not forbidden("true")


def test_the_guard_fails_tests_that_start_heavy_programs(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOEXTEND_UNIT", "1")
    pytester.makepyfile(test_it=GUARDED)
    result = pytester.runpytest_subprocess("-p", "autoextend.lab.unitguard",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=4)
    out = result.stdout.str()
    assert "ForbiddenProgram: losetup may not run in make unit" in out
    assert "this test tried: ['/usr/bin/qemu-system-x86_64'] (mark it slow)" in out
    assert "test_a_child_shell_runs_lvm (call): " in out and "/bin/lvm'] (mark it slow)" in out


def test_without_the_variable_nothing_is_guarded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTOEXTEND_UNIT", raising=False)
    pytester.makepyfile(test_it="import subprocess\n\ndef test_true() -> None:\n"
                                "    assert subprocess.run(['true']).returncode == 0\n")
    result = pytester.runpytest_subprocess("-p", "autoextend.lab.unitguard")
    result.assert_outcomes(passed=1)
