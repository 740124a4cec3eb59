"""Run an external command for the lab and turn failure into :class:`CommandError`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anyio

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
