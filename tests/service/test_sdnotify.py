"""sd_notify over a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from autoextend.clock import MonotonicClock
from autoextend.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def test_ready_status_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready("2 VMs")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=2 VMs"]
    n.status("busy")
    assert sock.recv(4096) == b"STATUS=busy"
    n.stopping()
    assert sock.recv(4096).decode().startswith("STOPPING=1")


def test_abstract_socket_address() -> None:
    name = f"autoextend-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert sock.recv(4096).startswith(b"READY=1")
    finally:
        sock.close()


def test_disabled_without_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    n.ready("nothing happens")  # must not raise


async def test_watchdog_pings_from_the_loop(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    sock.setblocking(False)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
    assert n.watchdog_interval_s == pytest.approx(0.05)
    with anyio.move_on_after(0.3):
        await n.watchdog_loop(MonotonicClock())
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert len(pings) >= 3 and set(pings) == {b"WATCHDOG=1"}


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval_s is None


def test_a_manager_that_does_not_read_never_blocks_the_sender(
    notify_socket: tuple[socket.socket, str],
) -> None:
    # The reader's queue holds net.unix.max_dgram_qlen datagrams (10 by default); a blocking
    # send past that would freeze the event loop. Nothing is read here: every send must
    # return at once, the overflow is dropped and counted, and the drop is logged once.
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    sends = qlen + 50
    with capture_logs() as logs:
        for _ in range(sends):
            n.notify("WATCHDOG=1")
    assert 0 < n.dropped <= sends
    warnings = [e for e in logs if "queue full" in e["event"]]
    assert len(warnings) == 1
    sock.setblocking(False)
    received = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            break
        received += 1
    assert received + n.dropped == sends
    n.ready("read again")  # the queue has room again: delivered, and a new run of drops
    assert sock.recv(4096).startswith(b"READY=1")
