"""Test doubles shared across the test packages (one copy each, typed against the protocol
they stand in for, so a keyword the protocol gains breaks them at lint time, not in a rig run).
"""

from __future__ import annotations

import anyio

from autoextend.lvm.reserve import FreeSpaceBackend
from autoextend.monitor.protocols import Extender, ExtendOutcome, RefreshGate
from autoextend.volumes import SpmAuthority, VolumeRef


class HeldExtender:
    """An :class:`Extender` that passes each extension to ``inner`` once released, and holds
    it until then (to let a guest hit ENOSPC first, or a block job pause). Starts held unless
    ``held=False``; :meth:`hold` holds again. Counts the calls it was given."""

    def __init__(self, inner: Extender, *, held: bool = True) -> None:
        self.inner = inner
        self.calls = 0
        self._open = anyio.Event()
        if not held:
            self._open.set()

    def hold(self) -> None:
        """Hold the extensions that come from now on (one already released goes on)."""
        if self._open.is_set():
            self._open = anyio.Event()

    def release(self) -> None:
        """Let every held extension, and every later one, through."""
        self._open.set()

    async def extend(
        self, volume: VolumeRef, size: int, *, refresh: bool = True,
        may_refresh: RefreshGate | None = None,
    ) -> ExtendOutcome:
        self.calls += 1
        await self._open.wait()
        return await self.inner.extend(volume, size, refresh=refresh, may_refresh=may_refresh)


def no_spm_backend(term: SpmAuthority) -> FreeSpaceBackend:
    """A ClusterAgent's SPM backend factory for a test that never becomes SPM."""
    raise AssertionError("this test never becomes SPM")
