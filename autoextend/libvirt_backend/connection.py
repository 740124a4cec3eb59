"""One connection to libvirtd: open, call in worker threads with timeouts, notice its end.

libvirt calls are blocking RPCs, so every call runs in a worker thread
(``anyio.to_thread.run_sync``) under ``fail_after``; a call that times out is abandoned (its
thread finishes on its own once libvirt answers or the connection dies). libvirt errors are
translated to :mod:`~autoextend.libvirt_backend.errors` classes naming the VM and the call.

The connection's end is noticed through libvirt's close callback (EOF when libvirtd dies,
keepalive timeout when it hangs) and through calls that find the connection dead; either
sets :attr:`LibvirtConnection.closed`. Both need libvirtaio registered on the running loop
(:func:`~autoextend.libvirt_backend.eventloop.ensure_event_impl`) before :meth:`open`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import libvirt

from autoextend.libvirt_backend.config import LibvirtSettings
from autoextend.libvirt_backend.errors import (
    LibvirtCallFailed,
    LibvirtConnectFailed,
    LibvirtDisconnected,
    LibvirtTimeout,
    VmNotFound,
)
from autoextend.logs import get_logger

log = get_logger("libvirt")

T = TypeVar("T")

CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}

class _CallError(Exception):
    """A libvirtError raised in the worker thread, with whether the connection still lives."""

    def __init__(self, err: libvirt.libvirtError, alive: bool) -> None:
        super().__init__(str(err))
        self.err = err
        self.alive = alive


def _error_code(err: libvirt.libvirtError) -> int:
    code = err.get_error_code()
    return int(code) if isinstance(code, int) else -1


def _error_message(err: libvirt.libvirtError) -> str:
    return str(err.get_error_message() or err).strip()


class LibvirtConnection:
    """An open ``virConnect`` plus what the backend needs to use and abandon it safely.

    Callbacks registered through :meth:`register` get this object as their ``opaque``, so a
    late event from a replaced connection can be recognised and ignored.
    """

    def __init__(self, conn: libvirt.virConnect, settings: LibvirtSettings) -> None:
        self.conn = conn
        self.settings = settings
        self.uri = settings.uri
        self.closed = anyio.Event()
        self.close_reason = ""
        self._callback_ids: list[int] = []
        self._in_flight = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ open / close

    @classmethod
    async def open(cls, settings: LibvirtSettings) -> LibvirtConnection:
        """Connect to ``settings.uri`` with keepalive and a close callback.

        Raises:
            LibvirtConnectFailed: libvirtd unreachable, refused, or too slow to answer.
        """
        abandoned = threading.Event()

        def connect() -> libvirt.virConnect | None:
            conn = libvirt.open(settings.uri)
            if abandoned.is_set():  # the caller gave up; do not leak the connection
                conn.close()
                return None
            return conn

        try:
            with anyio.fail_after(settings.call_timeout_s):
                conn = await anyio.to_thread.run_sync(connect, abandon_on_cancel=True)
        except TimeoutError as err:
            abandoned.set()
            raise LibvirtConnectFailed(
                settings.uri, f"no answer within {settings.call_timeout_s:g} s") from err
        except libvirt.libvirtError as err:
            raise LibvirtConnectFailed(settings.uri, _error_message(err)) from err
        assert conn is not None
        self = cls(conn, settings)
        try:
            await self.call("", "setKeepAlive", self._setup)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        return self

    def _setup(self, conn: libvirt.virConnect) -> None:
        conn.registerCloseCallback(self._on_close, None)
        conn.setKeepAlive(self.settings.keepalive_interval_s, self.settings.keepalive_count)

    def _on_close(self, _conn: libvirt.virConnect, reason: int, _opaque: Any) -> None:
        """libvirt's close callback (on the event loop thread): keep it tiny."""
        self.mark_closed(CLOSE_REASONS.get(reason, f"reason {reason}"))

    def mark_closed(self, reason: str) -> None:
        if not self.closed.is_set():
            self.close_reason = reason
            self.closed.set()

    def register(self, event_id: int, callback: Callable[..., None]) -> Callable[
            [libvirt.virConnect], None]:
        """A thread function (for :meth:`call`) that subscribes ``callback`` to ``event_id``
        for every domain, with this connection as opaque."""

        def subscribe(conn: libvirt.virConnect) -> None:
            self._callback_ids.append(conn.domainEventRegisterAny(None, event_id, callback, self))

        return subscribe

    async def close(self) -> None:
        """Deregister everything and close; best effort, bounded, never raises.

        If calls abandoned after a timeout still run, the handle is left to them (it closes
        when the last reference goes) rather than closed under their feet.
        """
        self.mark_closed("client")
        conn = self.conn
        ids, self._callback_ids = self._callback_ids, []

        def teardown() -> None:
            for callback_id in ids:
                try:
                    conn.domainEventDeregisterAny(callback_id)
                except libvirt.libvirtError:
                    pass
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass

        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.call_timeout_s):
            await anyio.to_thread.run_sync(teardown, abandon_on_cancel=True)
            # Worker threads decrement the count; polling beats a cross-thread event here.
            while self._in_flight:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            try:
                await anyio.to_thread.run_sync(conn.close, abandon_on_cancel=True)
            except libvirt.libvirtError as err:
                log.debug("libvirt close failed", uri=self.uri, error=_error_message(err))

    # ------------------------------------------------------------------ calls

    def _guarded(self, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Runs in the worker thread: ``fn(conn)``, libvirt errors tagged with liveness."""
        with self._lock:
            self._in_flight += 1
        try:
            return fn(self.conn)
        except libvirt.libvirtError as err:
            try:
                alive = self.conn.isAlive() == 1
            except libvirt.libvirtError:
                alive = False
            raise _CallError(err, alive) from err
        finally:
            with self._lock:
                self._in_flight -= 1

    async def call(self, vm: str, name: str, fn: Callable[[libvirt.virConnect], T]) -> T:
        """Run ``fn(conn)`` in a worker thread, bounded by ``call_timeout_s``.

        ``vm`` and ``name`` (the libvirt API) go into errors and logs.

        Raises:
            VmNotFound: libvirt says there is no such domain.
            LibvirtDisconnected: the connection is closed or died during the call.
            LibvirtTimeout: no answer in time.
            LibvirtCallFailed: libvirt refused the call.
        """
        if self.closed.is_set():
            raise LibvirtDisconnected(vm, name)
        timeout = self.settings.call_timeout_s
        try:
            with anyio.fail_after(timeout):
                return await anyio.to_thread.run_sync(self._guarded, fn, abandon_on_cancel=True)
        except TimeoutError as err:
            raise LibvirtTimeout(vm, name, timeout) from err
        except _CallError as wrapped:
            cause = wrapped.err
            code = _error_code(cause)
            if code == libvirt.VIR_ERR_NO_DOMAIN:
                raise VmNotFound(vm, name) from cause
            if not wrapped.alive:
                self.mark_closed("call failed: " + _error_message(cause))
                raise LibvirtDisconnected(vm, name, _error_message(cause)) from cause
            raise LibvirtCallFailed(vm, name, code, _error_message(cause)) from cause
