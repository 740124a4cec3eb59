"""Entry point run inside a private mount namespace: mount the lab's libvirt dirs, supervise
virtlogd and libvirtd.

Started by :mod:`autoextend.lab.libvirtd` as ``unshare -m --propagation private python -m
autoextend.lab.libvirtd_ns ROOT``. libvirt's paths (``/run/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt``, ``/var/log/libvirt``, ``/etc/libvirt``) are global, so each lab
instance bind-mounts its own directories under ``ROOT`` over them; nothing it does is seen by
another instance, and everything it leaves is under ``ROOT``. The client socket lives in
``ROOT/sock`` outside the masked paths, so the test process can reach it.

This process runs both daemons in the foreground as its children, and on SIGTERM/SIGINT stops
libvirtd first (it stops its domains' logging through virtlogd) and then virtlogd. If either
daemon dies, the other is stopped too and this process exits non-zero.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

PR_SET_PDEATHSIG = 1

# (mount point, directory under ROOT)
MOUNTS = (
    ("/etc/libvirt", "etc"),
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/cache/libvirt", "cache"),
    ("/var/log/libvirt", "log"),
)


def _mount_private(root: Path) -> None:
    for target, sub in MOUNTS:
        source = root / sub
        source.mkdir(parents=True, exist_ok=True)
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), target], check=True)


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent() -> None:
    """Get SIGTERM when the process that started us dies (a test run killed by a timeout),
    so the daemons never outlive their test session."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m autoextend.lab.libvirtd_ns ROOT", file=sys.stderr)
        return 2
    root = Path(argv[1])
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _die_with_parent()
    _mount_private(root)
    etc = root / "etc"
    virtlogd = subprocess.Popen(
        ["virtlogd", "-f", str(etc / "virtlogd.conf"), "-p", str(root / "virtlogd.pid")],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not Path("/run/libvirt/virtlogd-sock").exists() and time.monotonic() < deadline:
        if virtlogd.poll() is not None:
            return 1
        time.sleep(0.02)
    libvirtd = subprocess.Popen(
        ["libvirtd", "-f", str(etc / "libvirtd.conf"), "-p", str(root / "libvirtd.pid")],
        stdin=subprocess.DEVNULL,
    )
    status = 0
    while not stopping:
        if libvirtd.poll() is not None or virtlogd.poll() is not None:
            status = 1
            break
        time.sleep(0.1)
    _stop(libvirtd, 15)
    _stop(virtlogd, 5)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
