"""The local control socket: ``autoextend status`` and ``autoextend spm step-down`` talk to the
running service through it.

Protocol: the client sends one JSON object on one line, ``{"command": "<name>", ...}``, of at
most :data:`MAX_REQUEST` bytes and :data:`MAX_DEPTH` levels of nesting. The server answers one
line ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}`` and closes. The
reply has no size limit of its own: the client reads it to the newline (or end of stream), up
to :data:`MAX_REPLY`, so a status of thousands of drives arrives whole.

The socket is created with mode 0600 (root only): it can move the SPM role. Still, a buggy
client must never hurt the service:

* at most :data:`MAX_CLIENTS` clients are served at once; further ones get ``busy`` at once
  and are closed;
* each client has :data:`CLIENT_TIMEOUT_S` to send its request and again to take its reply;
* ``accept`` failing (out of file descriptors: EMFILE) is logged, counted and retried after
  a pause, never raised;
* any error while serving one client ends that client only.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup, TaskStatus

from autoextend import boundedjson
from autoextend.errors import AutoextendError, ServiceNotRunning
from autoextend.logs import get_logger

log = get_logger("control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_REQUEST = 64 * 1024
MAX_DEPTH = 16
MAX_REPLY = 1 << 30          # what a client accepts: far beyond any real status
MAX_CLIENTS = 64
CLIENT_TIMEOUT_S = 10.0      # to read a request, to send a reply, and the client's default wait
HANDLER_TIMEOUT_S = 300.0    # a step-down waits for the extensions in flight
ACCEPT_RETRY_S = 0.1         # pause after a failed accept (EMFILE), so the loop never spins
_CHUNK = 64 * 1024


@dataclass
class ControlCounters:
    served: int = 0        # requests answered (ok or error)
    refused: int = 0       # clients turned away because MAX_CLIENTS were being served
    failed: int = 0        # clients that timed out, sent garbage or vanished
    accept_errors: int = 0  # accept() failures (EMFILE and the like)


class UnexpectedAnswer(AutoextendError):
    """Something answered on the control socket, but not with an autoextend reply."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"unexpected answer on control socket {path}: {reason}")


class ControlServer:
    def __init__(self, path: str, *, max_clients: int = MAX_CLIENTS,
                 client_timeout_s: float = CLIENT_TIMEOUT_S) -> None:
        self.path = path
        self.max_clients = max_clients
        self.client_timeout_s = client_timeout_s
        self.counters = ControlCounters()
        self.active = 0
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
            async with listener, anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    try:
                        stream = await listener.accept()
                    except anyio.BrokenResourceError as exc:
                        # anyio wraps accept()'s OSError (EMFILE, ENFILE, ENOBUFS, ...); the
                        # listening socket itself is fine: pause and accept again.
                        if not isinstance(exc.__cause__, OSError):
                            raise
                        await self._accept_failed(exc.__cause__)
                        continue
                    except OSError as exc:
                        await self._accept_failed(exc)
                        continue
                    self._dispatch(tg, stream)
        finally:
            _remove_socket(path)

    async def _accept_failed(self, exc: OSError) -> None:
        self.counters.accept_errors += 1
        level = log.warning if self.counters.accept_errors == 1 else log.debug
        level("control socket accept failed", error=os.strerror(exc.errno) if exc.errno
              else str(exc), errors=self.counters.accept_errors,
              emfile=exc.errno in (errno.EMFILE, errno.ENFILE))
        await anyio.sleep(ACCEPT_RETRY_S)

    def _dispatch(self, tg: TaskGroup, stream: SocketStream) -> None:
        if self.active >= self.max_clients:
            self.counters.refused += 1
            if self.counters.refused == 1 or self.counters.refused % 1000 == 0:
                log.warning("control socket busy, refusing clients", active=self.active,
                            refused=self.counters.refused)
            tg.start_soon(self._refuse, stream)
            return
        self.active += 1
        tg.start_soon(self._client, stream)

    async def _refuse(self, stream: SocketStream) -> None:
        async with stream:
            with anyio.move_on_after(1.0):
                await _send_quietly(stream, {"ok": False, "error": "busy: too many clients"})

    async def _client(self, stream: SocketStream) -> None:
        try:
            async with stream:
                reply = await self._answer(stream)
                if reply is None:
                    return
                # A large reply (status of thousands of drives) is encoded in a worker thread:
                # the event loop never spends tens of milliseconds of CPU on one client.
                data = await anyio.to_thread.run_sync(_encode, reply)
                with anyio.move_on_after(self.client_timeout_s + len(data) / (1 << 20)) as scope:
                    await _send_quietly(stream, data)
                if scope.cancel_called:
                    self.counters.failed += 1
                    log.info("control client did not take its reply in time")
        except Exception:  # noqa: BLE001 - one client must never take the service down
            self.counters.failed += 1
            log.exception("control client failed")
        finally:
            self.active -= 1

    async def _answer(self, stream: SocketStream) -> dict[str, Any] | None:
        try:
            with anyio.fail_after(self.client_timeout_s):
                raw = await _read_line(stream, MAX_REQUEST, "request")
            if not raw:
                self.counters.failed += 1
                return None  # connected and left without a word
            request = boundedjson.loads(raw, MAX_DEPTH)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError("expected {\"command\": ...}")
            handler = self._handlers.get(request["command"])
            if handler is None:
                raise ValueError(f"unknown command {request['command'][:64]!r}")
            with anyio.fail_after(HANDLER_TIMEOUT_S):
                result = await handler(request)
            self.counters.served += 1
            return {"ok": True, "result": result}
        except (ValueError, AutoextendError) as exc:
            self.counters.failed += 1
            return {"ok": False, "error": str(exc)[:500]}
        except TimeoutError:
            self.counters.failed += 1
            return {"ok": False, "error": "timed out"}
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self.counters.failed += 1
            return None
        except Exception:  # noqa: BLE001 - a handler's bug fails this request only
            self.counters.failed += 1
            log.exception("control request failed")
            return {"ok": False, "error": "internal error (see the service log)"}


async def _send_quietly(stream: SocketStream, reply: dict[str, Any] | bytes) -> None:
    data = reply if isinstance(reply, bytes) else (json.dumps(reply) + "\n").encode()
    try:
        for start in range(0, len(data), _CHUNK):
            await stream.send(data[start:start + _CHUNK])
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


def _prepare_socket_path(path: Path) -> None:
    """Local metadata operations on /run (tmpfs): quick enough to run on the loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()


def _remove_socket(path: Path) -> None:
    path.unlink(missing_ok=True)


async def _read_line(stream: SocketStream, limit: int, what: str) -> bytes:
    """Bytes up to the first newline (or the end of the stream), at most ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await stream.receive(_CHUNK)
        except anyio.EndOfStream:
            break
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            size += end
        else:
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ValueError(f"{what} too large (over {limit} bytes)")
        if end >= 0:
            break
    return b"".join(chunks)


async def call(path: str, command: str, wait_s: float = CLIENT_TIMEOUT_S, **args: Any) -> Any:
    """Send one command to the running service and return its result.

    Raises:
        ServiceNotRunning: nothing (usable) listens on ``path``.
        AutoextendError: the service answered with an error, or with something that is not
            a reply of this protocol.
    """
    try:
        with anyio.fail_after(wait_s):
            stream = await anyio.connect_unix(path)
            async with stream:
                await stream.send((json.dumps({"command": command, **args}) + "\n").encode())
                raw = await _read_line(stream, MAX_REPLY, "reply")
    except FileNotFoundError:
        raise ServiceNotRunning(path, "no such socket") from None
    except ConnectionRefusedError:
        raise ServiceNotRunning(path, "connection refused") from None
    except PermissionError:
        raise ServiceNotRunning(path, "permission denied (run as root)") from None
    except TimeoutError:
        raise ServiceNotRunning(path, "no answer") from None
    except ValueError as exc:
        raise UnexpectedAnswer(path, str(exc)) from None
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "connection lost"
        raise ServiceNotRunning(path, reason) from None
    if len(raw) > DECODE_IN_THREAD:
        return await anyio.to_thread.run_sync(_result, path, command, raw)
    return _result(path, command, raw)


DECODE_IN_THREAD = 1 << 20  # bytes: a reply this large is decoded off the event loop


def _encode(reply: dict[str, Any]) -> bytes:
    return (json.dumps(reply, default=str) + "\n").encode()


def _result(path: str, command: str, raw: bytes) -> Any:
    """The ``result`` of a reply line; a line of another shape is an error, never a crash."""
    if not raw:
        raise UnexpectedAnswer(path, "empty answer")
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError):
        raise UnexpectedAnswer(path, "not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise UnexpectedAnswer(path, "not an autoextend reply")
    if not reply["ok"]:
        error = reply.get("error")
        raise AutoextendError(f"service refused {command}: "
                              f"{error if isinstance(error, str) else 'no reason given'}")
    return reply.get("result")


async def call_dict(path: str, command: str, wait_s: float = CLIENT_TIMEOUT_S,
                    **args: Any) -> dict[str, Any]:
    """:func:`call` for commands whose result is a JSON object."""
    result = await call(path, command, wait_s, **args)
    if not isinstance(result, dict):
        raise UnexpectedAnswer(path, f"{command} result is not an object")
    return result
