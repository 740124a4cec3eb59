"""The ``[libvirt]`` section: how the libvirt backend reaches libvirtd and how patiently.

Defaults and why:

- ``uri`` ``qemu:///system``: the system QEMU driver, where production VMs run. The lab's
  isolated libvirtd is reached with ``qemu:///system?socket=<path>``.
- ``reconnect_interval_s`` 2.0 / ``reconnect_max_s`` 30.0: first retry soon after libvirtd
  went away (a restart takes about a second), then back off so a host without libvirtd is
  not hammered. 2 s is also vdsm's watermark interval, the cadence it works on.
- ``call_timeout_s`` 10.0: one libvirt RPC (stats, XML, threshold, resume) normally answers
  in milliseconds; a hung libvirtd must not hold a VM's checks for longer than the monitor's
  extend timeout scale.
- ``keepalive_interval_s`` 5 / ``keepalive_count`` 3: libvirt's client defaults are 5 s x 5;
  three missed pings (15 s) notice a wedged, not just a dead, libvirtd sooner. A dead one is
  noticed at once through EOF on the socket.
- ``rescan_interval_s`` 30.0: a safety net listing of running domains, in case a lifecycle
  event was lost (the events are reliable while connected; this only bounds the damage).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from autoextend.confbase import Section


class LibvirtSettings(Section):
    uri: str = Field("qemu:///system", min_length=1)
    reconnect_interval_s: float = Field(2.0, gt=0.0, le=600.0)
    reconnect_max_s: float = Field(30.0, gt=0.0, le=3600.0)
    call_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    keepalive_interval_s: int = Field(5, ge=1, le=600)
    keepalive_count: int = Field(3, ge=1, le=100)
    rescan_interval_s: float = Field(30.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> LibvirtSettings:
        if self.reconnect_max_s < self.reconnect_interval_s:
            raise ValueError("reconnect_max_s must be >= reconnect_interval_s")
        return self
