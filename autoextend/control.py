"""The local control socket: ``autoextend status`` and ``autoextend spm step-down`` talk to the
running service through it.

Protocol: one JSON object per line. The client sends ``{"command": "<name>", ...}``; the server
answers one line ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}`` and closes.
The socket is created with mode 0600 (root only): it can move the SPM role.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskStatus

from autoextend.errors import AutoextendError, ServiceNotRunning
from autoextend.logs import get_logger

log = get_logger("control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT_S = 10.0   # to read a request, and the client's default wait
HANDLER_TIMEOUT_S = 300.0  # a step-down waits for the extensions in flight


class ControlServer:
    def __init__(self, path: str) -> None:
        self.path = path
        self._handlers: dict[str, Handler] = {}

    def register(self, command: str, handler: Handler) -> None:
        self._handlers[command] = handler

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        path = Path(self.path)
        _prepare_socket_path(path)
        old_umask = os.umask(0o177)
        try:
            listener = await anyio.create_unix_listener(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        try:
            async with listener:
                task_status.started()
                await listener.serve(self._client)
        finally:
            _remove_socket(path)

    async def _client(self, stream: SocketStream) -> None:
        async with stream:
            reply: dict[str, Any]
            try:
                with anyio.fail_after(CLIENT_TIMEOUT_S):
                    raw = await _read_line(stream)
                request = json.loads(raw)
                if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                    raise ValueError("expected {\"command\": ...}")
                handler = self._handlers.get(request["command"])
                if handler is None:
                    raise ValueError(f"unknown command {request['command']!r}")
                with anyio.fail_after(HANDLER_TIMEOUT_S):
                    reply = {"ok": True, "result": await handler(request)}
            except (ValueError, AutoextendError) as exc:
                reply = {"ok": False, "error": str(exc)}
            except TimeoutError:
                reply = {"ok": False, "error": "timed out"}
            try:
                await stream.send((json.dumps(reply, default=str) + "\n").encode())
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass


def _prepare_socket_path(path: Path) -> None:
    """Local metadata operations on /run (tmpfs): quick enough to run on the loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()


def _remove_socket(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _read_line(stream: SocketStream) -> str:
    buf = b""
    while b"\n" not in buf:
        try:
            chunk = await stream.receive()
        except anyio.EndOfStream:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    return buf.split(b"\n", 1)[0].decode("utf-8", errors="replace")


async def call(path: str, command: str, wait_s: float = CLIENT_TIMEOUT_S, **args: Any) -> Any:
    """Send one command to the running service and return its result.

    Raises:
        ServiceNotRunning: nothing listens on ``path``.
        AutoextendError: the service answered with an error.
    """
    try:
        with anyio.fail_after(wait_s):
            stream = await anyio.connect_unix(path)
            async with stream:
                await stream.send((json.dumps({"command": command, **args}) + "\n").encode())
                raw = await _read_line(stream)
    except FileNotFoundError:
        raise ServiceNotRunning(path, "no such socket") from None
    except ConnectionRefusedError:
        raise ServiceNotRunning(path, "connection refused") from None
    except PermissionError:
        raise ServiceNotRunning(path, "permission denied (run as root)") from None
    except TimeoutError:
        raise ServiceNotRunning(path, "no answer") from None
    try:
        reply = json.loads(raw)
    except json.JSONDecodeError:
        raise ServiceNotRunning(path, "unreadable answer") from None
    if not reply.get("ok"):
        raise AutoextendError(f"service refused {command}: {reply.get('error')}")
    return reply.get("result")
