"""The local extender: extend through the volume backend on this host (single-host mode).

Extend the volume to at least the size asked, make this host see the new size (refresh), and
report the size it now sees. Expected failures come back as outcomes, not exceptions.
"""

from __future__ import annotations

import time

from autoextend.errors import VolumeError
from autoextend.logs import get_logger
from autoextend.monitor.protocols import ExtendOutcome, OutcomeCode, OutcomeKind, RefreshGate
from autoextend.volumes import (
    ExtendsAndRefreshes,
    VolumeBackend,
    VolumeNotFound,
    VolumeRef,
    VolumeSpaceError,
)

log = get_logger("extender.local")


class LocalExtender:
    def __init__(self, backend: VolumeBackend) -> None:
        self.backend = backend

    async def extend(
        self, volume: VolumeRef, size: int, *, refresh: bool = True,
        may_refresh: RefreshGate | None = None,  # one short local step: asked just before
    ) -> ExtendOutcome:
        t0 = time.monotonic()
        both = self.backend if isinstance(self.backend, ExtendsAndRefreshes) else None
        try:
            if both is not None and refresh:  # one worker-thread hop instead of four (loop)
                result, seen, phases = await both.extend_and_refresh(volume, size)
            else:
                result = await self.backend.extend(volume, size)
                t1 = time.monotonic()
                if not refresh:  # a VM migrating out: this host's view stays as it is
                    return ExtendOutcome(OutcomeKind.OK, result.size,
                                         phases={"extend": t1 - t0}, refreshed=False)
                seen = await self.backend.refresh(volume)
                phases = {"extend": t1 - t0, "refresh": time.monotonic() - t1}
        except VolumeSpaceError as exc:
            return ExtendOutcome(OutcomeKind.FAILED, 0, str(exc), code=OutcomeCode.VG_FULL)
        except VolumeNotFound as exc:
            return ExtendOutcome(OutcomeKind.REJECTED, 0, str(exc), code=OutcomeCode.NOT_FOUND)
        except VolumeError as exc:
            return ExtendOutcome(OutcomeKind.FAILED, 0, str(exc))
        if seen < size:
            return ExtendOutcome(
                OutcomeKind.FAILED, seen,
                f"volume is {result.size} bytes in metadata but {seen} bytes on this host",
            )
        return ExtendOutcome(OutcomeKind.OK, seen, phases=phases)
