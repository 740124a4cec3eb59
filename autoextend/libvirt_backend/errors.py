"""Errors of the libvirt backend: each names the VM (domain) and the libvirt call it concerns.

All derive from :class:`~autoextend.errors.HypervisorError`, so the monitor handles any
backend failure the same way. :class:`VmNotFound` says the domain is not (or no longer)
running; :class:`LibvirtDisconnected` that there is no connection to libvirtd right now.
"""

from __future__ import annotations

from autoextend.errors import HypervisorError
from autoextend.monitor import protocols


class LibvirtBackendError(HypervisorError):
    """A libvirt call for ``vm`` failed; ``call`` is the libvirt API name."""

    def __init__(self, vm: str, call: str, reason: str) -> None:
        self.vm = vm
        self.call = call
        self.reason = reason
        super().__init__(f"libvirt {vm}: {call}: {reason}" if vm else f"libvirt: {call}: {reason}")


class VmNotFound(protocols.VmNotFound, LibvirtBackendError):
    """No running domain of that name (never existed, stopped, undefined)."""

    def __init__(self, vm: str, call: str, detail: str = "no such running domain") -> None:
        LibvirtBackendError.__init__(self, vm, call, detail)


class LibvirtDisconnected(protocols.HypervisorDisconnected, LibvirtBackendError):
    """There is no usable connection to libvirtd (down, restarting, or not yet connected)."""

    def __init__(self, vm: str, call: str, detail: str = "not connected to libvirtd") -> None:
        LibvirtBackendError.__init__(self, vm, call, detail)


class LibvirtCallFailed(LibvirtBackendError):
    """libvirt answered with an error; ``code`` is its ``VIR_ERR_*`` number."""

    def __init__(self, vm: str, call: str, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(vm, call, f"{message} (code {code})")


class LibvirtTimeout(LibvirtBackendError):
    """libvirt did not answer within ``timeout_s``."""

    def __init__(self, vm: str, call: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(vm, call, f"no answer within {timeout_s:g} s")


class MalformedReply(LibvirtBackendError):
    """A reply (stats, domain XML) lacked something or had a bad value; ``detail`` says what."""

    def __init__(self, vm: str, call: str, detail: str) -> None:
        self.detail = detail
        super().__init__(vm, call, f"malformed reply: {detail}")


class LibvirtConnectFailed(HypervisorError):
    """Could not open ``uri`` (libvirtd down, wrong socket, no permission)."""

    def __init__(self, uri: str, reason: str) -> None:
        self.uri = uri
        self.reason = reason
        super().__init__(f"libvirt {uri}: cannot connect: {reason}")


class EventLoopMismatch(HypervisorError):
    """libvirt's event implementation is bound to another event loop than the running one.

    ``libvirtaio`` can be registered once per process; it stays tied to the loop it was
    registered on. Run every libvirt user on that one loop.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"libvirt event loop: {reason}")
