"""External commands and processes of the lab: :func:`run` turns a failure into
:class:`CommandError`; :func:`stop` ends a process the lab started (SIGTERM, a grace
period, then SIGKILL), even from a cancelled scope; :func:`scrape` reads a Prometheus
endpoint."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Mapping, Sequence

import anyio
from anyio.abc import Process

from autoextend.lab.errors import CommandError


async def run(
    command: Sequence[str | os.PathLike[str]],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run ``command`` (an argument list, never a shell) and return its stdout as text.

    Raises:
        CommandError: the command could not be started or exited non-zero.
    """
    args = [os.fspath(part) for part in command]
    try:
        result = await anyio.run_process(args, check=False, cwd=cwd, env=env)
    except OSError as err:
        raise CommandError(args, -1, f"cannot run: {err.strerror}") from err
    if result.returncode != 0:
        raise CommandError(args, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout.decode(errors="replace")


async def stop(process: Process, grace_s: float = 15.0) -> None:
    """SIGTERM, up to ``grace_s`` for a clean exit, then SIGKILL; shielded (a cleanup)."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(grace_s):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


def scrape(url: str) -> dict[str, float]:
    """A /metrics page as {series: value} (blocking: call from a worker thread)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values
