"""sanlock daemons for the lab (tests, benchmarks): one per simulated host.

The daemon cannot start here unaided: it exits because it cannot raise RLIMIT_MEMLOCK (hard
limit 8 MiB) and then RLIMIT_RTPRIO. With ``-l 0`` (no mlockall) and ``-h 0`` (no realtime
scheduling) it needs neither, so a small ``LD_PRELOAD`` shim (:data:`SHIM_SOURCE`, compiled
with gcc at run time; no binary is committed) makes ``setrlimit``/``setrlimit64`` report
success for those two resources and passes every other call through. No watchdog (``-w 0``),
as in sanlock's own test suite.

One daemon per machine owns ``/run/sanlock``, so each simulated host's daemon runs in its own
mount namespace with a private tmpfs on ``/run``::

    unshare --mount --propagation private -- python -m autoextend.lab.sanlockd SHIM NAME

Clients reach it either inside that namespace (``nsenter -t PID -m -- sanlock client ...``,
:meth:`SanlockDaemon.command`) or from outside through the daemon's root,
``SANLOCK_RUN_DIR=/proc/PID/root/run/sanlock`` (:meth:`SanlockDaemon.env`): libsanlock reads
that variable, so an ``autoextend run`` host process talks to its own daemon.

Everything started is stopped in ``finally`` blocks: the daemon is shut down (``client
shutdown -f 1``) or SIGKILLed and waited for; it also gets SIGKILL if its parent dies
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import Process

from autoextend.errors import LabError

PR_SET_PDEATHSIG = 1
TOOLS = ("sanlock", "gcc", "unshare", "nsenter", "mount")

SHIM_SOURCE = r"""
/* setrlimit shim for the lab's sanlock daemons (autoextend/lab/sanlockd.py) */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/resource.h>

typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);
typedef int (*setrlimit64_fn)(__rlimit_resource_t, const struct rlimit64 *);

static int ignored(__rlimit_resource_t resource)
{
	return resource == RLIMIT_MEMLOCK || resource == RLIMIT_RTPRIO;
}

int setrlimit(__rlimit_resource_t resource, const struct rlimit *limit)
{
	static setrlimit_fn real;

	if (ignored(resource))
		return 0;
	if (!real)
		real = (setrlimit_fn)dlsym(RTLD_NEXT, "setrlimit");
	return real(resource, limit);
}

int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *limit)
{
	static setrlimit64_fn real;

	if (ignored(resource))
		return 0;
	if (!real)
		real = (setrlimit64_fn)dlsym(RTLD_NEXT, "setrlimit64");
	return real(resource, limit);
}
"""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def unavailable() -> str | None:
    """Why no lab sanlock daemon can run on this machine (None: it can)."""
    if os.geteuid() != 0:
        return "the sanlock daemon needs root (mount namespaces, /run/sanlock)"
    missing = missing_tools()
    if missing:
        return f"missing {', '.join(missing)} (apt-get install sanlock gcc util-linux)"
    return None


async def build_shim(directory: Path) -> Path:
    """Compile the setrlimit shim into ``directory``."""
    source = directory / "sanlock_shim.c"
    shim = directory / "sanlock_shim.so"
    await anyio.Path(source).write_text(SHIM_SOURCE)
    result = await anyio.run_process(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(shim), str(source), "-ldl"],
        check=False)
    if result.returncode != 0:
        raise LabError(f"cannot build the sanlock shim: {result.stderr.decode().strip()}")
    return shim


async def kill_and_wait(process: Process, grace: float = 5.0) -> None:
    """Stop a process we started and wait for it (shielded: runs on failure too)."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            try:
                process.kill()
            except ProcessLookupError:
                pass
        with anyio.move_on_after(grace):
            await process.wait()


@dataclass
class SanlockDaemon:
    name: str
    process: Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def run_dir(self) -> str:
        """The daemon's ``/run/sanlock`` seen from outside its mount namespace."""
        return f"/proc/{self.pid}/root/run/sanlock"

    def env(self) -> dict[str, str]:
        """Environment for a client process (libsanlock) outside the namespace."""
        return {"SANLOCK_RUN_DIR": self.run_dir}

    def command(self, *args: str) -> list[str]:
        """``sanlock client ARGS`` run inside the daemon's namespace."""
        return ["nsenter", "-t", str(self.pid), "-m", "--", "sanlock", "client", *args]

    async def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return await anyio.run_process(self.command(*args), check=check)

    @property
    def running(self) -> bool:
        return self.process.returncode is None


@asynccontextmanager
async def sanlock_daemon(shim: Path, name: str, log: Path,
                         start_timeout_s: float = 30.0) -> AsyncIterator[SanlockDaemon]:
    """A sanlock daemon named ``name`` (its host name in lockspaces) in its own mount
    namespace, answering ``client gets``; shut down on exit. LabError if it cannot start."""
    out = await anyio.to_thread.run_sync(open, log, "ab")
    try:
        process = await anyio.open_process(
            ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-m",
             "autoextend.lab.sanlockd", str(shim), name],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )
    finally:
        out.close()
    daemon = SanlockDaemon(name, process, log)
    try:
        with anyio.move_on_after(start_timeout_s):
            while True:
                if process.returncode is not None:
                    break
                if (await daemon.client("gets", check=False)).returncode == 0:
                    break
                await anyio.sleep(0.05)
        if process.returncode is not None or (
                await daemon.client("gets", check=False)).returncode != 0:
            tail = (await anyio.Path(log).read_text(errors="replace"))[-400:]
            raise LabError(f"sanlock daemon {name} did not start: {tail.strip()}")
        yield daemon
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with anyio.move_on_after(10):
                    await daemon.client("shutdown", "-f", "1", "-w", "1", check=False)
            await kill_and_wait(process)


def daemon_main(shim: str, name: str) -> None:
    """Inside the private mount namespace: a tmpfs on /run, then exec the daemon. The daemon
    is SIGKILLed if its parent dies (PR_SET_PDEATHSIG survives the exec)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)
    os.makedirs("/run/sanlock", exist_ok=True)
    env = dict(os.environ, LD_PRELOAD=shim)
    env.pop("SANLOCK_RUN_DIR", None)
    sanlock = shutil.which("sanlock") or "/usr/sbin/sanlock"
    os.execve(sanlock, [sanlock, "daemon", "-D", "-w", "0", "-l", "0", "-h", "0", "-U", "root",
                        "-G", "root", "-L", "-1", "-S", "-1", "-e", name], env)


if __name__ == "__main__":
    daemon_main(sys.argv[1], sys.argv[2])
