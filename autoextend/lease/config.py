"""The ``[lease]`` section: host id and SPM lease on the shared metadata area.

Defaults follow sanlock (io_timeout 10 s, watchdog fire timeout 60 s) and vdsm (250 hosts).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from autoextend.confbase import Section
from autoextend.lease.layout import AREA_ALIGN, max_hosts_limit
from autoextend.lease.priority import DEFAULT_PRIORITY, Priority, parse_priority

# A 1 MiB sanlock lockspace holds 2000 hosts with 512-byte sectors, 250 with 4096-byte ones.
SANLOCK_MAX_HOSTS_4K = 250


class LeaseSettings(Section):
    # The lease engine: "native" (autoextend's own delta and Disk Paxos leases in the lease
    # area) or "sanlock" (a lockspace and a resource of the local sanlock daemon). Every host
    # of a pool must use the same engine; ``autoextend lease init`` records it on disk.
    engine: Literal["native", "sanlock"] = "native"
    # sanlock engine: the lockspace name, the same on every host (at most 48 bytes).
    sanlock_lockspace: str = Field(default="autoextend", min_length=1, max_length=48,
                                   pattern=r"^[A-Za-z0-9_.-]+$")
    # sanlock engine: a file or device holding the lockspace (at 0) and the SPM resource (at
    # 1 MiB); "" = inside the lease area on ``path`` (at ``offset`` and ``offset`` + 1 MiB).
    sanlock_path: str = ""
    # Shared file or block device holding the metadata area ("" = leases not used).
    path: str = ""
    # Byte offset of the lease area on ``path``; a multiple of 1 MiB. The mailbox follows at
    # offset + autoextend.metadata_area.MAILBOX_OFFSET.
    offset: int = Field(default=0, ge=0)
    # This host's id, 1..max_hosts, unique in the cluster (0 = not configured).
    host_id: int = Field(default=0, ge=0, le=2000)
    # Unique host name stored in the host id record ("" = the machine's hostname). A host that
    # restarts with the same name skips the wait for its own old record.
    host_name: str = Field(default="", max_length=64)
    # 0 = detect (BLKSSZGET on block devices, 512 on files); or force 512 / 4096.
    sector_size: Literal[0, 512, 4096] = 0
    # T: the I/O timeout every lease timeout derives from (sanlock default 10 s; see
    # autoextend/lease/README.md for the table). Rule of thumb: tolerated storage outage / 5.
    io_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)
    # W: time a stuck holder may keep running after its lease expired before the watchdog
    # (or the process kill) has certainly stopped it. Must be equal on all hosts (sanlock 60 s).
    watchdog_fire_timeout_s: float = Field(default=60.0, gt=0.0, le=3600.0)
    # Host slots in the area (vdsm uses 250; at most 2000 with 512 B, 500 with 4 KiB sectors).
    max_hosts: int = Field(default=250, ge=1, le=2000)
    # How often a host waiting for the SPM lease re-reads it (0 = io_timeout). After a clean
    # release another host takes over within this plus one ballot.
    acquire_poll_s: float = Field(default=0.0, ge=0.0, le=600.0)
    # SPM priority (oVirt's): "never" (this host never contends for the SPM role, but joins
    # and sends its requests like any host) or 0..100. When the lease is free, a host yields
    # to live hosts with a higher number for two acquire polls per level (at most six), then
    # contends anyway. Equal numbers contend as before. Native engine: published in the host
    # id record; sanlock engine: only "never" or the default. A reload applies it (a running
    # SPM term is kept: ``autoextend spm step-down`` hands it over).
    spm_priority: Priority = DEFAULT_PRIORITY

    @field_validator("spm_priority", mode="before")
    @classmethod
    def _check_priority(cls, value: object) -> Priority:
        return parse_priority(value)

    @model_validator(mode="after")
    def _check_geometry(self) -> LeaseSettings:
        if self.offset % AREA_ALIGN:
            raise ValueError(f"offset must be a multiple of {AREA_ALIGN} (1 MiB)")
        limit = max_hosts_limit(self.sector_size or 512)
        if self.sector_size == 4096 and self.max_hosts > limit:
            raise ValueError(f"max_hosts must be <= {limit} with 4096-byte sectors")
        if self.engine == "sanlock":
            if self.io_timeout_s != int(self.io_timeout_s) or self.io_timeout_s > 65535:
                raise ValueError("io_timeout_s must be a whole number of seconds with "
                                 "engine = \"sanlock\" (sanlock's unit)")
            if self.spm_priority not in ("never", DEFAULT_PRIORITY):
                raise ValueError(f"spm_priority must be \"never\" or {DEFAULT_PRIORITY} (the "
                                 "default) with engine = \"sanlock\": sanlock has no priority")
            if self.sector_size == 4096 and self.host_id > SANLOCK_MAX_HOSTS_4K:
                raise ValueError(f"host_id must be <= {SANLOCK_MAX_HOSTS_4K} with engine = "
                                 "\"sanlock\" and 4096-byte sectors")
        if self.host_id > self.max_hosts:
            raise ValueError(f"host_id {self.host_id} is larger than max_hosts {self.max_hosts}")
        return self
