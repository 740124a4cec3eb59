"""``autoextend config reload`` and the running-config comparison of ``config check``.

Both print the lines of :mod:`autoextend.reloadguard` (``key: old -> new``, with ``(held:
why)`` for a change that holds a reload back): the same lines the service logs for a
SIGHUP, so an operator sees before the SIGHUP what it would do.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import click

from autoextend import control, reloadguard
from autoextend import settings as settings_mod
from autoextend.errors import AutoextendError, ServiceNotRunning
from autoextend.settings import Settings


class ReloadHeld(AutoextendError):
    """The service held the reload back (exit 1, one line; the changes are on stdout)."""

    def __init__(self, count: int) -> None:
        self.count = count
        super().__init__(f"the reload is held back: {count} change(s) look like a half-written"
                         " file (see above); check the file, then run"
                         " `autoextend config reload --confirm`")


def compare_with_running(new: Settings, raw: dict[str, Any] | None, source: str) -> None:
    """Print what a reload of ``new`` (``raw``: the file as parsed) would change in the
    running service, and whether it would be held back; a note when no service answers."""
    sock = new.service.control_socket
    try:
        reply = anyio.run(control.call_dict, sock, "config")
        running = Settings.model_validate_json(json.dumps(reply["running"]))
        overrides = reply.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise TypeError("overrides is not an object")
    except ServiceNotRunning:
        return  # no service running here: nothing to compare with
    except (KeyError, TypeError, ValueError) as exc:
        raise control.UnexpectedAnswer(sock, f"config of an unknown shape ({exc})") from None
    # What the service would load: the file, with the service's own command-line options
    # (not this command's) over it.
    if raw is not None:
        new = settings_mod.from_mapping(raw, source)
    if overrides:
        new = settings_mod.with_overrides(new, overrides)
    found = reloadguard.changes(running, new, raw or {}, running.service.reload_max_factor)
    if not found:
        click.echo("same as the running config: a reload changes nothing")
        return
    held = reloadguard.held(found)
    click.echo(f"a reload would change, against the running config ({len(found)}):")
    for change in found:
        click.echo(f"  {change.line()}")
    if held:
        click.echo(f"a reload would be held back until confirmed ({len(held)} held:"
                   " `autoextend config reload --confirm`, or SIGHUP twice)")


def reload(sock: str, confirm: bool) -> None:
    reply = anyio.run(lambda: control.call_dict(sock, "reload", confirm=confirm))
    held = reply.get("held")
    if reply.get("outcome") == "held" and isinstance(held, dict):
        for line in held.get("changes", []):
            click.echo(f"  {line}")
        raise ReloadHeld(len(held.get("held", [])))
    applied = reply.get("applied") or []
    click.echo("config reloaded" + (f": {', '.join(applied)}" if applied else ": no change"))
    pending = reply.get("pending_restart") or []
    if pending:
        click.echo("needs a restart: " + ", ".join(pending))
