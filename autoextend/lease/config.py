"""The ``[lease]`` section: host id and SPM lease on the shared metadata area."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autoextend.confbase import Section


class LeaseSettings(Section):
    path: str = ""
    host_id: int = Field(0, ge=0, le=2000)
    host_name: str = ""
    sector_size: Literal[0, 512, 4096] = 0
    io_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    watchdog_fire_timeout_s: float = Field(60.0, ge=0.0, le=3600.0)
