"""Both runners under errors and timeouts: hung commands are killed and reaped, a killed or
confused ``lvm`` shell is replaced by a fresh session, garbage output is never acted on."""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from autoextend.lab.waiting import until
from autoextend.lvm.errors import (
    InsufficientFreeExtents,
    LvmCommandError,
    LvmReportError,
    LvmTimeoutError,
    NoSuchLogicalVolume,
)
from autoextend.lvm.lvmconf import LvmCommandConfig
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import ProcessRunner
from autoextend.lvm.shell import LvmShellRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.volumes import LocalAuthority, VolumeRef

from .support import MiB, Pool


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


async def _wait_gone(pid: int) -> bool:
    await until(lambda: _gone(pid), 5, f"process {pid} to be gone")
    return True


async def test_hung_command_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    hang = _script(tmp_path / "lvm", f"#!/bin/sh\nsleep 60 &\necho $! > {pidfile}\nwait\n")
    runner = ProcessRunner(hang, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(LvmTimeoutError) as info:
        await runner.run(["lvextend", "--extents", "9", "vg/lv"])
    assert time.monotonic() - started < 10
    assert info.value.timeout_s == 0.5 and info.value.returncode is None
    assert "timed out" in str(info.value) and "vg/lv" in str(info.value)
    assert await _wait_gone(int(pidfile.read_text()))  # the grandchild died too


async def test_missing_binary_is_a_clear_error() -> None:
    with pytest.raises(LvmCommandError, match="cannot run"):
        await ProcessRunner("/nonexistent/lvm").run(["vgs"])


async def test_garbage_output_is_never_acted_on(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = _script(
        tmp_path / "lvm", f'#!/bin/sh\necho "$1" >> {calls}\necho "{{not json at all"\n'
    )
    writer = LvmWriter(ProcessRunner(fake), LvmCommandConfig(()), LocalAuthority())
    with pytest.raises(LvmReportError, match="unusable lvm report"):
        await writer.extend(VolumeRef("vg", "lv"), 8 * MiB)
    assert calls.read_text().split() == ["vgs"]  # no lvextend with a garbage extent size


@pytest.mark.slow
async def test_shell_runner_matches_process_runner(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "lv1")
    await pool.writer.create_lv(ref, 8 * MiB, tags=("a", "b"))
    shell = LvmShellRunner(timeout_s=30)
    try:
        reader = LvmReader(shell, pool.config)
        writer = LvmWriter(shell, pool.config, LocalAuthority())
        assert await reader.lv(ref) == await pool.reader.lv(ref)
        assert await reader.pvs() == await pool.reader.pvs()
        result = await writer.extend(ref, 10 * MiB)
        assert (result.size, result.changed) == (12 * MiB, True)
        assert not (await writer.extend(ref, 12 * MiB)).changed
        with pytest.raises(NoSuchLogicalVolume):
            await writer.extend(VolumeRef(pool.vg, "nope"), 8 * MiB)
        with pytest.raises(InsufficientFreeExtents):
            await writer.extend(ref, 1 << 40)
        assert (await pool.reader.lv(ref)).size == 12 * MiB
        await pool.writer.extend(ref, 20 * MiB)  # another process changes the metadata
        assert (await reader.lv(ref)).size == 20 * MiB  # the session sees it (no stale cache)
        assert shell.sessions_started == 1  # errors did not cost the session
    finally:
        await shell.aclose()


@pytest.mark.slow
async def test_shell_hung_command_is_killed_and_session_restarted(pool: Pool) -> None:
    ref = VolumeRef(pool.vg, "lv1")
    await pool.writer.create_lv(ref, 8 * MiB)
    shell = LvmShellRunner(timeout_s=1.0)
    writer = LvmWriter(shell, pool.config, LocalAuthority())
    try:
        await writer.vg(pool.vg)
        first_pid = shell.session_pid
        assert first_pid is not None
        lock_fd = os.open(f"/run/lock/lvm/V_{pool.vg}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # lvextend waits for this lock: a hang
            with pytest.raises(LvmTimeoutError):
                await writer.extend(ref, 16 * MiB)
        finally:
            os.close(lock_fd)
            os.unlink(f"/run/lock/lvm/V_{pool.vg}")
        assert shell.session_pid is None
        assert await _wait_gone(first_pid)
        assert (await writer.extend(ref, 16 * MiB)).changed
        assert shell.sessions_started == 2
        assert (await pool.reader.lv(ref)).size == 16 * MiB
    finally:
        await shell.aclose()


@pytest.mark.slow
async def test_shell_killed_from_outside_is_replaced(pool: Pool) -> None:
    shell = LvmShellRunner(timeout_s=10)
    reader = LvmReader(shell, pool.config)
    try:
        vg = await reader.vg(pool.vg)
        pid = shell.session_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert await _wait_gone(pid)
        assert await reader.vg(pool.vg) == vg
        assert shell.sessions_started == 2
    finally:
        await shell.aclose()


async def test_shell_garbage_answer_restarts_the_session(tmp_path: Path) -> None:
    # A stand-in shell: answers the first command with a JSON document that is not an lvm2
    # answer, then answers properly.
    fake = _script(
        tmp_path / "lvm",
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "out = os.fdopen(int(os.environ['LVM_REPORT_FD']), 'w')\n"
        "for line in sys.stdin:\n"
        "    if not os.path.exists(" + repr(str(tmp_path / "seen")) + "):\n"
        "        open(" + repr(str(tmp_path / "seen")) + ", 'w').close()\n"
        "        out.write('{\"surprise\": true}\\n')\n"
        "    else:\n"
        "        out.write('{\"log\": [{\"log_type\": \"status\", \"log_context\": \"shell\", '\n"
        "                  '\"log_message\": \"success\", \"log_ret_code\": \"1\"}]}\\n')\n"
        "    out.flush()\n",
    )
    shell = LvmShellRunner(fake, timeout_s=5)
    try:
        with pytest.raises(LvmReportError):
            await shell.run(["vgs"])
        assert shell.session_pid is None
        result = await shell.run(["vgs"])
        assert result.argv == ("vgs",)
        assert shell.sessions_started == 2
    finally:
        await shell.aclose()


async def test_shell_refuses_unquotable_arguments() -> None:
    shell = LvmShellRunner("/nonexistent/lvm")
    with pytest.raises(LvmCommandError, match="both quote kinds"):
        await shell.run(["lvs", "it's \"odd\""])
    assert shell.sessions_started == 0
