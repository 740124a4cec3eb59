"""The whole configuration as one frozen value: each component's section, composed.

Each component owns its section model next to its code (``monitor/config.py``,
``lease/config.py``, ...); this module composes them, with the two sections that belong to
the service as a whole. It is a neutral type: the rules over it (:mod:`autoextend.validation`,
:mod:`autoextend.timeouts`) import it, and :mod:`autoextend.settings` loads a file into it.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from autoextend.capacity.config import CapacitySettings
from autoextend.confbase import Section
from autoextend.lease.config import LeaseSettings
from autoextend.libvirt_backend.config import LibvirtSettings
from autoextend.lvm.config import LvmSettings, VolumeSettings
from autoextend.monitor.config import PolicySettings, ResumeSettings
from autoextend.qmp.config import QmpSettings
from autoextend.spm.config import MailboxSettings


class ServiceSettings(Section):
    hypervisor: Literal["qmp", "libvirt"] = "libvirt"
    extender: Literal["local", "mailbox"] = "local"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    control_socket: str = "/run/autoextend/control.sock"
    # Where the service keeps what must outlive it (the write throttle's hold file,
    # throttle-holds.json: the limits to give back after a crash). "" (default): the
    # control socket's directory, /run/autoextend.
    state_dir: str = ""
    dry_run: bool = False
    # A reload that moves a [policy] number by more than this factor (up or down) is held
    # back until confirmed (autoextend/reloadguard.py).
    reload_max_factor: float = Field(4.0, ge=1.0, le=1000.0)


    @property
    def state_path(self) -> str:
        """The state directory in effect (``state_dir``, or the control socket's)."""
        return self.state_dir or os.path.dirname(self.control_socket) or "."


class MetricsSettings(Section):
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(9466, ge=1, le=65535)


class Settings(Section):
    service: ServiceSettings = ServiceSettings()
    policy: PolicySettings = PolicySettings()
    resume: ResumeSettings = ResumeSettings()
    qmp: QmpSettings = QmpSettings()
    libvirt: LibvirtSettings = LibvirtSettings()
    volumes: VolumeSettings = VolumeSettings()
    lvm: LvmSettings = LvmSettings()
    lease: LeaseSettings = LeaseSettings()
    mailbox: MailboxSettings = MailboxSettings()
    metrics: MetricsSettings = MetricsSettings()
    capacity: CapacitySettings = CapacitySettings()
