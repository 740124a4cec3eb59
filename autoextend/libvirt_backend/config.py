"""The ``[libvirt]`` section."""

from __future__ import annotations

from pydantic import Field

from autoextend.confbase import Section


class LibvirtSettings(Section):
    uri: str = "qemu:///system"
    reconnect_interval_s: float = Field(2.0, gt=0.0, le=600.0)
    event_queue_size: int = Field(1024, ge=1, le=1 << 20)
