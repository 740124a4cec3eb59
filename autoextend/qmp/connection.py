"""One QMP connection to one QEMU: connect, execute and close, each bounded in time.

This is the only module that touches qemu.qmp's client. It turns the library's errors into
:mod:`autoextend.qmp.errors` (naming VM and command), never wraps cancellation, and closes
the connection under a shield so a dead QEMU never leaves a half-open client behind.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping

import anyio
from qemu.qmp import ConnectError, ExecInterruptedError, ExecuteError, QMPError, Runstate

from autoextend.logs import get_logger
from autoextend.qmp.errors import (
    QmpCommandFailed,
    QmpConnectFailed,
    QmpDisconnected,
    QmpTimeout,
)
from autoextend.qmp.jobs import JOB_EVENT_NAMES
from autoextend.qmp.listener import BoundedListener, new_client

log = get_logger("qmp")

#: The events the backend translates; all others are never queued.
EVENT_NAMES = (
    "BLOCK_WRITE_THRESHOLD",
    "BLOCK_IO_ERROR",
    "STOP",
    "RESUME",
    "DEVICE_DELETED",
    *JOB_EVENT_NAMES,
    "MIGRATION",
)

#: How many commands and events ``QmpConnection.recent`` keeps.
RECENT_MESSAGES = 256

# How long closing may take before we give up on a clean disconnect.
_CLOSE_TIMEOUT_S = 5.0


def commands_after(trace: Iterable[tuple[str, str]], event: str) -> list[str]:
    """The commands in ``trace`` (``QmpConnection.recent``) after the last ``event`` read;
    all of them when it holds no such event."""
    found: list[str] = []
    for kind, name in trace:
        if kind == "event" and name == event:
            found = []
        elif kind == "command":
            found.append(name)
    return found


class QmpConnection:
    """A negotiated QMP session on a unix socket, with a bounded event listener.

    ``label`` names the VM in errors; it starts as the socket path and becomes the VM name
    once known.
    """

    def __init__(
        self,
        path: str,
        *,
        connect_timeout_s: float,
        command_timeout_s: float,
        event_queue_size: int,
    ) -> None:
        self.path = path
        self.label = path
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._client = new_client(path)
        #: Why the connection failed on our side (a message we could not parse, an unexpected
        #: library error), as opposed to QEMU closing it; None while healthy.
        self.failure: str | None = None
        #: Commands sent on this connection so far, and the last few commands and events
        #: in the order they were sent and read, as ("command" | "event", name): what a
        #: test or the bench counts per resume.
        self.executed = 0
        self.recent: deque[tuple[str, str]] = deque(maxlen=RECENT_MESSAGES)
        self.listener = BoundedListener(EVENT_NAMES, event_queue_size, trace=self.recent)
        self._client.register_listener(self.listener)

    @property
    def connected(self) -> bool:
        return self._client.runstate is Runstate.RUNNING

    async def open(self) -> None:
        """Connect and negotiate within ``connect_timeout_s``.

        Raises:
            QmpConnectFailed: refused, no such socket, not QMP, or no greeting in time.
        """
        try:
            # asyncio.wait_for cancels the library's connect exactly once, so its own
            # rollback (which awaits) can finish; an anyio deadline would re-cancel it.
            await asyncio.wait_for(self._client.connect(self.path), self._connect_timeout_s)
        except TimeoutError:
            await self.close()
            raise QmpConnectFailed(
                self.label, "connect", f"no QMP greeting within {self._connect_timeout_s:g} s"
            ) from None
        except ConnectError as err:
            await self.close()
            cause = err.exc
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else (
                str(cause) or type(cause).__name__
            )
            raise QmpConnectFailed(self.label, "connect", reason) from err
        except (OSError, EOFError, QMPError) as err:
            await self.close()
            raise QmpConnectFailed(self.label, "connect", str(err) or type(err).__name__) from err

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        """Run one QMP command and return its ``return`` value.

        Raises:
            QmpTimeout: no reply within ``command_timeout_s``.
            QmpCommandFailed: QEMU answered with an error.
            QmpDisconnected: the connection is down or dropped while waiting.
        """
        if not self.connected:
            raise QmpDisconnected(self.label, command, "not connected")
        self.executed += 1
        self.recent.append(("command", command))
        try:
            with anyio.fail_after(self._command_timeout_s):
                return await self._client.execute(command, arguments)
        except TimeoutError:
            raise QmpTimeout(self.label, command, self._command_timeout_s) from None
        except ExecuteError as err:
            raise QmpCommandFailed(self.label, command, err.error_class, str(err)) from err
        except ExecInterruptedError as err:
            raise QmpDisconnected(self.label, command, "connection lost") from err
        except (QMPError, OSError, EOFError) as err:
            raise QmpDisconnected(self.label, command, str(err) or type(err).__name__) from err
        except Exception as err:  # noqa: BLE001 - whatever the library raised, this VM only
            self._failed(err)
            await self.close()
            raise QmpDisconnected(self.label, command, self.failure or "error") from err

    def _failed(self, err: BaseException) -> None:
        if self.failure is None:
            self.failure = (f"{type(err).__name__}: {err}" if str(err) else
                            type(err).__name__)[:500]

    async def wait_lost(self) -> None:
        """Return once the connection is no longer running (QEMU exited, socket closed)."""
        while self._client.runstate is Runstate.RUNNING:
            await self._client.runstate_changed()

    async def close(self) -> None:
        """Disconnect, shielded from cancellation; errors of a dead peer are expected."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT_S):
            if self._client.runstate is Runstate.IDLE:
                return
            try:
                await self._client.disconnect()
            except (EOFError, OSError) as err:
                log.debug("qmp disconnect", path=self.path, error=str(err) or type(err).__name__)
            except Exception as err:  # noqa: BLE001 - the reader's error, re-raised here
                # The library ends the connection when its reader fails (a message it could
                # not parse, a line past its buffer) and hands that error to disconnect().
                self._failed(err)
                log.debug("qmp disconnect", path=self.path, error=self.failure)
