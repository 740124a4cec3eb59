"""The mailbox extender: the monitor's Extender that asks the SPM, then refreshes locally.

``extend(volume, size)``: a request through :class:`~autoextend.spm.host.HostMailbox`, then
(after an OK reply) ``backend.refresh(volume)`` on this host and a check that this host now
sees at least ``size``. Expected failures come back as an outcome, never as an exception.
"""

from __future__ import annotations

from autoextend import logs
from autoextend.clock import Clock, MonotonicClock
from autoextend.errors import AutoextendError
from autoextend.monitor.protocols import ExtendOutcome, OutcomeCode, OutcomeKind, RefreshGate
from autoextend.spm.errors import MailboxError, MailboxTimeout
from autoextend.spm.host import HostMailbox
from autoextend.spm.wire import ReasonCode, Status
from autoextend.volumes import VolumeBackend, VolumeRef

log = logs.get_logger("spm.extender")


class MailboxExtender:
    """Implements :class:`autoextend.monitor.protocols.Extender` through the SPM."""

    def __init__(
        self,
        mailbox: HostMailbox,
        backend: VolumeBackend,
        *,
        timeout_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._mailbox = mailbox
        self._backend = backend
        self._timeout_s = timeout_s
        self._clock = clock or MonotonicClock()

    async def extend(
        self, volume: VolumeRef, size: int, *, refresh: bool = True,
        may_refresh: RefreshGate | None = None,
    ) -> ExtendOutcome:
        bound = log.bind(volume=str(volume), host_id=self._mailbox.host_id)
        started = self._clock.now()
        try:
            reply = await self._mailbox.request(volume, size, timeout_s=self._timeout_s)
        except MailboxError as err:
            bound.warning("extend request failed", error=str(err))
            code = OutcomeCode.TIMEOUT if isinstance(err, MailboxTimeout) else OutcomeCode.NONE
            return ExtendOutcome(OutcomeKind.FAILED, reason=str(err), code=code)
        if reply.status is Status.REJECTED:
            bound.warning("SPM rejected the extend", reason=reply.text, size=size)
            return ExtendOutcome(OutcomeKind.REJECTED, reason=_reason(reply.reason.name,
                                                                      reply.text),
                                 code=OutcomeCode.NOT_FOUND
                                 if reply.reason is ReasonCode.NO_SUCH_VOLUME
                                 else OutcomeCode.INVALID)
        if reply.status is Status.FAILED:
            bound.warning("SPM could not extend", reason=reply.text, size=size)
            return ExtendOutcome(OutcomeKind.FAILED, reason=_reason(reply.reason.name,
                                                                    reply.text),
                                 code=OutcomeCode.VG_FULL if reply.reason is ReasonCode.NO_SPACE
                                 else OutcomeCode.NONE)
        t_reply = self._clock.now()
        if refresh and may_refresh is not None and not await may_refresh():
            refresh = False  # a migration out began while the request was at the SPM
        if not refresh:  # a VM migrating out: this host's view stays as it is
            bound.info("extended through the SPM; refresh deferred", size=reply.size,
                       duration_s=t_reply - started)
            return ExtendOutcome(OutcomeKind.OK, size=reply.size, refreshed=False,
                                 phases={"request": t_reply - started})
        try:
            seen = await self._backend.refresh(volume)
        except AutoextendError as err:
            bound.warning("refresh after extend failed", error=str(err))
            return ExtendOutcome(OutcomeKind.FAILED, reason=f"refresh failed: {err}")
        if seen < size:
            reason = f"extended by the SPM to {reply.size} but this host sees {seen} < {size}"
            bound.warning("size check after refresh failed", reason=reason)
            return ExtendOutcome(OutcomeKind.FAILED, size=seen, reason=reason)
        bound.info("extended through the SPM", size=seen,
                   duration_s=self._clock.now() - started)
        return ExtendOutcome(OutcomeKind.OK, size=seen, phases={
            "request": t_reply - started, "refresh": self._clock.now() - t_reply})


def _reason(code: str, text: str) -> str:
    return f"{code.lower()}: {text}" if text else code.lower()
