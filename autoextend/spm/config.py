"""The ``[mailbox]`` section: the storage mailbox between hosts and the SPM."""

from __future__ import annotations

from pydantic import Field

from autoextend.confbase import Section


class MailboxSettings(Section):
    path: str = ""
    poll_interval_s: float = Field(0.05, gt=0.0, le=60.0)
