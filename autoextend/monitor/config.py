"""The ``[policy]`` section: when to extend and by how much.

Defaults follow vdsm (../shared/reference/vdsm.md): chunk 2560 MiB, utilization 20 %
(so extend when less than 80 % of a chunk = 2048 MiB is free), cap = capacity x 1.1,
a 2 s fallback poll.
"""

from __future__ import annotations

from pydantic import Field

from autoextend.confbase import Section


class PolicySettings(Section):
    chunk_mib: int = Field(2560, ge=1, le=1 << 24)
    utilization_percent: int = Field(20, ge=0, le=99)
    cap_factor: float = Field(1.1, ge=1.0, le=4.0)
    extent_mib: int = Field(128, ge=1, le=1 << 16)
    poll_interval_s: float = Field(2.0, gt=0.0, le=3600.0)
    extend_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    retry_initial_s: float = Field(1.0, gt=0.0, le=600.0)
    retry_max_s: float = Field(30.0, gt=0.0, le=3600.0)
