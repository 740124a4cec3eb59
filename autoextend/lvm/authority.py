"""Who may write VG metadata: the :class:`SpmAuthority` a writer checks before every command.

In a shared-storage pool only the SPM writes metadata; the lease helper's SPM term object
implements ``check()``. :class:`LocalAuthority` always allows and is meant **only for
single-host mode** (one host owns the VG, no SPM election), the lab and tests.
"""

from __future__ import annotations

from typing import Protocol

from autoextend.errors import NotSpmError


class SpmAuthority(Protocol):
    def check(self) -> None:
        """Return if this host may write metadata now; raise NotSpmError otherwise."""
        ...


class LocalAuthority:
    """Always allows. Single-host mode only: never use it where other hosts share the VG."""

    def check(self) -> None:
        return None


class NoAuthority:
    """Never allows: what a host that is not SPM holds."""

    def __init__(self, reason: str = "this host is not the SPM") -> None:
        self.reason = reason

    def check(self) -> None:
        raise NotSpmError(self.reason)
