"""Find (and clean up) lab resources a test session left behind.

A resource belongs to a session when it points into one of the session's directories: a loop
device whose backing file lives there, a FUSE mount (the lab's fault file system) mounted
there, or a QEMU / libvirtd / virtlogd / Prometheus / fault-file-system process whose command
line names a path there. Direct child processes of the session count too. Other
sessions' resources (other engineers run tests on the same machine) are never reported or touched.

Synchronous on purpose: it runs from pytest's ``sessionfinish`` hook, outside the event loop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

WATCHED_PROGRAMS = ("qemu-system", "libvirtd", "virtlogd", "virtqemud", "prometheus")
WATCHED_MODULES = ("autoextend.lab.faultfs",)  # python -m MODULE ...


@dataclass(frozen=True)
class Leftover:
    kind: str    # "loop", "mount" or "process"
    ident: str   # /dev/loopN or pid
    detail: str  # backing file or command line

    def __str__(self) -> str:
        return f"{self.kind} {self.ident} ({self.detail})"


def _under(path: str, roots: list[str]) -> bool:
    clean = path.removesuffix(" (deleted)")
    return any(clean == root or clean.startswith(root.rstrip("/") + "/") for root in roots)


def leftover_loop_devices(roots: list[str]) -> list[Leftover]:
    """Loop devices backed by a file under one of ``roots``."""
    out = subprocess.run(["losetup", "--json", "--list"], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0 or not out.stdout.strip():
        return []
    found = []
    for row in json.loads(out.stdout).get("loopdevices", []):
        backing = str(row.get("back-file") or "")
        if _under(backing, roots):
            found.append(Leftover("loop", str(row["name"]), backing))
    return found


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _proc_ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    # the command name (field 2) may contain spaces; fields after the last ')' are plain
    return int(stat.rsplit(")", 1)[1].split()[1])


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def leftover_processes(roots: list[str], parent: int | None = None) -> list[Leftover]:
    """QEMU/libvirt processes naming a path under ``roots``, or children of ``parent``."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        argv = _proc_cmdline(pid)
        if not argv or _is_zombie(pid):
            continue
        program = Path(argv[0]).name
        if not any(program.startswith(name) for name in WATCHED_PROGRAMS) and not any(
                module in argv for module in WATCHED_MODULES):
            continue
        mine = parent is not None and _proc_ppid(pid) == parent
        mine = mine or any(
            root in arg for arg in argv for root in roots
        )
        if mine:
            found.append(Leftover("process", str(pid), " ".join(argv)[:300]))
    return found


def leftover_fuse_mounts(roots: list[str], mounts: Path = Path("/proc/self/mounts")
                         ) -> list[Leftover]:
    """FUSE mounts whose mount point is under one of ``roots``."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[2].startswith("fuse") and _under(fields[1], roots):
            found.append(Leftover("mount", fields[1], fields[0]))
    return found


def find_leftovers(roots: list[str], parent: int | None = None) -> list[Leftover]:
    """Everything under ``roots`` (and children of ``parent``) still attached or running."""
    return (leftover_processes(roots, parent) + leftover_fuse_mounts(roots)
            + leftover_loop_devices(roots))


def clean_up(leftovers: list[Leftover], grace: float = 5.0) -> None:
    """Kill leftover processes (TERM, then KILL), unmount leftover FUSE mounts (lazily) and
    detach leftover loop devices."""
    pids = [int(item.ident) for item in leftovers if item.kind == "process"]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if not _gone(pid)]
        time.sleep(0.1)
    for pid in pids:
        _signal(pid, signal.SIGKILL)
    for item in leftovers:
        if item.kind == "mount":
            subprocess.run(["umount", "-l", item.ident], capture_output=True, check=False)
    for item in leftovers:
        if item.kind == "loop":
            subprocess.run(["losetup", "--detach", item.ident], capture_output=True, check=False)


def _signal(pid: int, signum: signal.Signals) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _gone(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return True
    except ChildProcessError:
        pass
    return _is_zombie(pid) or not Path(f"/proc/{pid}").exists()
