"""The ``[qmp]`` section: where to find QEMU monitors and how to talk to them."""

from __future__ import annotations

from pydantic import Field

from autoextend.confbase import Section


class QmpSettings(Section):
    socket_glob: str = "/run/autoextend/qmp/*.sock"
    rescan_interval_s: float = Field(1.0, gt=0.0, le=600.0)
    connect_timeout_s: float = Field(5.0, gt=0.0, le=600.0)
    command_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    event_queue_size: int = Field(256, ge=1, le=1 << 20)
