"""Everything that can go wrong before the service is ready: one line on stderr, exit 2 for
the config, exit 1 for the environment, no traceback (unless --log-level debug).

Each case runs the real ``autoextend run`` (loop volumes, QMP sockets that nothing creates, a
real metadata file formatted by ``autoextend lease init``); none needs QEMU or lvm2.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.clirun import Result, autoextend, loop_config, write_config


def run(config: Path, *extra: str) -> Result:
    return autoextend("run", "--config", str(config), "--log-format", "json", *extra)


def start_fails(tmp_path: Path, text: str, code: int, expected: str) -> str:
    path = write_config(tmp_path / "c.toml", text)
    result = run(path)
    assert result.code == code, result.stderr
    assert expected in result.error, result.error
    return result.error


# ---- metrics ---------------------------------------------------------------------------------


def test_metrics_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = start_fails(
            tmp_path, loop_config(tmp_path, f"[metrics]\nenabled = true\nport = {port}\n"),
            1, f"metrics endpoint 127.0.0.1:{port}: address already in use",
        )
    assert line.startswith("autoextend: error: ")
    assert not (tmp_path / "ctl.sock").exists()  # what had started was stopped and cleaned


def test_metrics_address_not_on_this_host(tmp_path: Path) -> None:
    start_fails(  # 192.0.2.0/24 is TEST-NET-1: never a local address
        tmp_path, loop_config(tmp_path, '[metrics]\nenabled = true\naddress = "192.0.2.1"\n'),
        1, "metrics endpoint 192.0.2.1:9466: cannot assign requested address",
    )


def test_metrics_address_that_is_no_address(tmp_path: Path) -> None:
    start_fails(tmp_path, loop_config(tmp_path, '[metrics]\naddress = "no such/host"\n'),
                2, "metrics.address: is neither an IP address nor a host name")


# ---- control socket --------------------------------------------------------------------------


def _socket_config(tmp_path: Path, sock: str) -> str:
    return loop_config(tmp_path).replace(f'"{tmp_path}/ctl.sock"', f'"{sock}"')


def test_control_socket_empty(tmp_path: Path) -> None:
    start_fails(tmp_path, _socket_config(tmp_path, ""), 2,
                "service.control_socket: must not be empty")


def test_control_socket_too_long(tmp_path: Path) -> None:
    sock = str(tmp_path / ("s" * 120))
    start_fails(tmp_path, _socket_config(tmp_path, sock), 2,
                "service.control_socket: is ")


def test_control_socket_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    start_fails(tmp_path, _socket_config(tmp_path, f"{tmp_path}/file/ctl.sock"), 1,
                f"control socket {tmp_path}/file/ctl.sock: {tmp_path}/file is not a directory")


def test_control_socket_with_nul(tmp_path: Path) -> None:
    start_fails(tmp_path, _socket_config(tmp_path, f"{tmp_path}/c\\u0000.sock"), 2,
                "service.control_socket: must not contain a NUL byte")


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_control_socket_path_taken_by_something_else(tmp_path: Path, kind: str) -> None:
    sock = tmp_path / "ctl.sock"
    if kind == "file":
        sock.write_text("")
    else:
        sock.mkdir()
    text = "a directory" if kind == "directory" else "not a socket"
    start_fails(tmp_path, loop_config(tmp_path), 1,
                f"control socket {sock}: the path exists and is {text}")
    assert sock.exists()  # left alone


@pytest.fixture
def running_service(tmp_path: Path) -> Iterator[Path]:
    """A real ``autoextend run`` (loop volumes, no VMs), ready on its control socket."""
    path = write_config(tmp_path / "first.toml", loop_config(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoextend", "run", "--config", str(path), "--log-format",
         "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while autoextend("status", "--config", str(path)).code != 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the first service never answered"
            time.sleep(0.1)  # poll with a deadline (a sync fixture)
        yield path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_second_service_on_the_same_control_socket(
    tmp_path: Path, running_service: Path
) -> None:
    result = run(running_service)
    assert result.code == 1
    assert result.error == (
        f"autoextend: error: control socket {tmp_path}/ctl.sock: another autoextend service"
        " is listening on it (stop it first)"
    )
    # The first one is untouched: its socket still answers.
    assert autoextend("status", "--config", str(running_service)).code == 0


# ---- volumes ---------------------------------------------------------------------------------


def test_loop_root_with_nul(tmp_path: Path) -> None:
    text = loop_config(tmp_path).replace(f'"{tmp_path}/volumes"', f'"{tmp_path}/v\\u0000"')
    start_fails(tmp_path, text, 2, "volumes.loop_root: must not contain a NUL byte")


def test_lvm_binary_missing(tmp_path: Path) -> None:
    text = (f'[service]\ncontrol_socket = "{tmp_path}/ctl.sock"\n'
            f'[qmp]\nsocket_glob = "{tmp_path}/qmp/*.sock"\n'
            f'[lvm]\npvs = ["/dev/loop99"]\nvgs = ["vg0"]\nlvm_binary = "{tmp_path}/no-lvm"\n')
    start_fails(tmp_path, text, 1, f"lvm.lvm_binary {tmp_path}/no-lvm: not found")


# ---- mailbox mode ----------------------------------------------------------------------------


def mailbox_config(tmp_path: Path, area: Path, lease: str = "", mailbox: str = "") -> str:
    return loop_config(
        tmp_path,
        f'[lvm]\nvgs = ["vg0"]\n[lease]\npath = "{area}"\nhost_id = 1\n'
        f"io_timeout_s = 0.1\nwatchdog_fire_timeout_s = 0.2\n{lease}\n[mailbox]\n{mailbox}\n",
        service='extender = "mailbox"',
    )


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """A 16 MiB metadata area formatted by the real `autoextend lease init`."""
    path = tmp_path / "area"
    with path.open("wb") as f:
        f.truncate(16 << 20)
    result = autoextend("lease", "init", "--path", str(path), "--max-hosts", "16", "--yes")
    assert result.code == 0, result.stderr
    return path


def test_lease_path_does_not_exist(tmp_path: Path) -> None:
    start_fails(tmp_path, mailbox_config(tmp_path, tmp_path / "absent"), 1,
                f"lease.path {tmp_path}/absent: does not exist")


def test_lease_path_is_a_directory(tmp_path: Path) -> None:
    start_fails(tmp_path, mailbox_config(tmp_path, tmp_path), 1,
                f"lease.path {tmp_path}: is a directory")


def test_lease_area_not_formatted(tmp_path: Path) -> None:
    blank = tmp_path / "blank"
    with blank.open("wb") as f:
        f.truncate(16 << 20)
    start_fails(tmp_path, mailbox_config(tmp_path, blank, "max_hosts = 16"), 1,
                "no usable lease area")


def test_lease_offset_beyond_the_file(tmp_path: Path, area: Path) -> None:
    start_fails(
        tmp_path,
        mailbox_config(tmp_path, area, "max_hosts = 16\noffset = 1073741824",
                       "offset = 8388608\nmax_hosts = 16"),
        1, f"lease.offset 1073741824: the lease area (1073741824..1077936128) lies beyond the"
           f" end of {area} (16777216 bytes)",
    )


def test_mailbox_path_differs_from_lease_path(tmp_path: Path, area: Path) -> None:
    start_fails(tmp_path, mailbox_config(tmp_path, area, "max_hosts = 16",
                                         f'path = "{tmp_path}/other"'),
                2, "mailbox.path: must be empty or equal to lease.path")


def test_mailbox_max_hosts_does_not_fit_the_file(tmp_path: Path, area: Path) -> None:
    # 2000 hosts: ring sectors, 8 KiB request and reply boxes, a 4 KiB in-use record and a
    # 512 B summary record each, then the SPM's 4 KiB intent record
    start_fails(tmp_path, mailbox_config(tmp_path, area, "max_hosts = 16", "max_hosts = 2000"),
                1, "the mailbox needs bytes 4194304..46182400 but the storage has 16777216")


def test_host_name_past_its_on_disk_length(tmp_path: Path, area: Path) -> None:
    name = "é" * 40  # 40 characters, 80 bytes: the record holds 64 bytes
    text = mailbox_config(tmp_path, area, f'max_hosts = 16\nhost_name = "{name}"')
    line = start_fails(tmp_path, text, 2,
                       "lease.host_name: is 80 bytes in UTF-8; the lease record holds at most 64")
    check = autoextend("config", "check", "--config", str(tmp_path / "c.toml"))
    assert (check.code, check.error) == (2, line)


# ---- the config file itself ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["arrays", "inline tables"])
def test_deeply_nested_toml(tmp_path: Path, kind: str) -> None:
    depth = 100_000
    value = "[" * depth + "]" * depth if kind == "arrays" else "{a=" * depth + "1" + "}" * depth
    path = write_config(tmp_path / "c.toml", f"[policy]\nchunk_mib = {value}\n")
    for result in (run(path), autoextend("config", "check", "--config", str(path))):
        assert result.code == 2
        assert result.error == f"autoextend: config error: {path}: arrays or tables nested" \
                               " deeper than 16"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert (result.code, result.error) == (
        2, f"autoextend: config error: {tmp_path}: is a directory, not a file")


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv to drop CAP_DAC_OVERRIDE")
def test_config_file_unreadable(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", loop_config(tmp_path))
    path.chmod(0)
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-m",
         "autoextend", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    assert (result.code, result.error) == (
        2, f"autoextend: config error: {path}: cannot read: Permission denied")


# ---- the traceback, only at debug ------------------------------------------------------------


def test_debug_adds_the_traceback_before_the_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = write_config(tmp_path / "c.toml",
                        _socket_config(tmp_path, f"{tmp_path}/file/ctl.sock"))
    result = run(path, "--log-level", "debug")
    assert result.code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"autoextend: error: control socket {tmp_path}/file/ctl.sock:"
        f" {tmp_path}/file is not a directory"
    )


# ---- stopping during start-up ----------------------------------------------------------------


def test_sigterm_stops_a_start_up_that_waits(tmp_path: Path, area: Path) -> None:
    """A lease join waits for seconds (minutes at io_timeout 60 s); SIGTERM (systemctl stop)
    must end the service at once, cleanly, not after the join."""
    text = mailbox_config(tmp_path, area, "max_hosts = 16",
                          "request_timeout_s = 700.0").replace(  # outlasts a failover at 60 s
        "io_timeout_s = 0.1\nwatchdog_fire_timeout_s = 0.2", "io_timeout_s = 60.0"
    )
    path = write_config(tmp_path / "c.toml", text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoextend", "run", "--config", str(path), "--log-format",
         "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ctl.sock").exists():  # started before the lease join
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the control socket never appeared"
            time.sleep(0.05)  # poll with a deadline (a sync test)
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)  # the join alone would take minutes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert '"shutting down"' in stderr and '"joined the pool"' not in stderr
    assert not (tmp_path / "ctl.sock").exists()


@pytest.mark.slow
async def test_max_hosts_too_many_for_a_4k_device(tmp_path: Path) -> None:
    """lease.sector_size = 0 detects 4 KiB on this device, where 250 hosts do not fit."""
    from autoextend.lvm import loopdev

    backing = tmp_path / "area4k"
    with backing.open("wb") as f:
        f.truncate(64 << 20)
    device = await loopdev.attach(backing, sector_size=4096, direct_io=True)
    try:
        text = mailbox_config(tmp_path, Path(device), "max_hosts = 1000")
        start_fails(tmp_path, text, 1,
                    f"lease area on {device}: max_hosts 1000 not in 1..500 for 4096-byte sectors")
    finally:
        await loopdev.detach(device)
