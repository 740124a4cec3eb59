"""A fork server for torture workers: imports the worker once, then forks one per request.

Starting a worker with ``python -m`` costs about 0.4 s of wall time and 0.16 s of CPU here
(imports of anyio, pydantic, structlog), paid on every SIGKILL of the torture. A fork of this
pre-imported, single-threaded process starts a worker in a few milliseconds.

Protocol, one line per message (``python -m tests.lease.torture_spawner``, driven by
``Spawner`` in torture.py):

- ``spawn ARG...`` -> ``pid PID``: fork a worker running ``torture_worker.run([ARG...])``.
- ``reap PID`` (no reply): collect a worker that has exited (the harness saw it through its
  pidfd). Workers are reaped only on request, so a PID stays valid while the harness may
  still signal it.
- EOF on stdin: SIGKILL every worker not yet reaped, reap them all, exit.

Workers also get ``PR_SET_PDEATHSIG=SIGKILL``: they die with this server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback

from . import torture_worker

PR_SET_PDEATHSIG = 1


def _child(args: list[str], server: int) -> None:
    code = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:
            os._exit(1)  # the server died between fork and prctl
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.close(null)
        torture_worker.run(args)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def serve() -> None:
    server = os.getpid()
    children: set[int] = set()
    try:
        while line := sys.stdin.readline():
            word, *rest = line.split()
            if word == "spawn":
                pid = os.fork()
                if pid == 0:
                    _child(rest, server)
                children.add(pid)
                sys.stdout.write(f"pid {pid}\n")
                sys.stdout.flush()
            elif word == "reap":
                pid = int(rest[0])
                if pid in children:
                    os.waitpid(pid, 0)
                    children.discard(pid)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)


if __name__ == "__main__":
    serve()
