"""Errors of the QMP backend: every one names the VM and the QMP command it concerns.

All derive from :class:`~autoextend.errors.HypervisorError`, so the monitor can handle any
backend failure the same way; :class:`VmNotFound` tells it the VM is not (or no longer)
connected.
"""

from __future__ import annotations

from autoextend.errors import HypervisorError
from autoextend.monitor import protocols


class QmpError(HypervisorError):
    """A QMP call for ``vm`` failed; ``command`` is the QMP command (or ``connect``)."""

    def __init__(self, vm: str, command: str, reason: str) -> None:
        self.vm = vm
        self.command = command
        # A reason may quote what QEMU sent: keep log lines short.
        self.reason = reason if len(reason) <= 500 else reason[:500] + "..."
        super().__init__(f"qmp {vm}: {command}: {self.reason}")


class VmNotFound(protocols.VmNotFound, QmpError):
    """No connected VM of that name (never seen, gone, or between reconnects)."""

    def __init__(self, vm: str, command: str) -> None:
        QmpError.__init__(self, vm, command, "no such VM connected")


class QmpCommandFailed(QmpError):
    """QEMU answered the command with an error (``error_class`` as QEMU names it)."""

    def __init__(self, vm: str, command: str, error_class: str, desc: str) -> None:
        self.error_class = error_class
        self.desc = desc
        super().__init__(vm, command, f"{error_class}: {desc}")


class QmpTimeout(QmpError):
    """QEMU did not answer within ``timeout_s``."""

    def __init__(self, vm: str, command: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(vm, command, f"no reply within {timeout_s:g} s")


class QmpDisconnected(protocols.HypervisorDisconnected, QmpError):
    """The connection dropped before or while the command ran."""


class QmpConnectFailed(QmpError):
    """Could not connect to or negotiate with the QMP socket ``vm`` (its path)."""


class MalformedReply(QmpError):
    """A reply or event lacked a key or had a value of the wrong type; ``detail`` says which."""

    def __init__(self, vm: str, command: str, detail: str) -> None:
        self.detail = detail
        super().__init__(vm, command, f"malformed reply: {detail}")
