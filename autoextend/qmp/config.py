"""The ``[qmp]`` section: where to find QEMU monitors and how to talk to them.

Reasons for the defaults:

- ``socket_glob``: one directory that the VM launcher puts QMP sockets in; one socket per VM.
- ``rescan_interval_s`` 1 s: a new VM is picked up within a second. A rescan is a directory
  listing plus one cheap ``query-block`` per connected VM (to notice hot-plugged drives),
  so it costs little even with hundreds of VMs.
- ``drive_watch_interval_s`` (unset: 10 x ``rescan_interval_s``): how often each VM's drive
  list is compared (QEMU 7.2 sends no event for a hot-plugged disk). A drive plugged in since
  is not armed yet, so it cannot be missed: its first ENOSPC or the next look finds it. One
  ``query-block`` per VM per second was most of an idle service's work at 1,000 drives.
- ``connect_timeout_s`` 5 s: QEMU answers the greeting within milliseconds; a socket that
  accepts but stays silent longer is hung, and only its own task waits on it.
- ``command_timeout_s`` 10 s: QMP commands we send are queries and ``cont``; QEMU can be
  slow to answer under heavy I/O (the main loop is shared with the block layer), but 10 s
  means the monitor is stuck.
- ``reconnect_initial_s`` / ``reconnect_max_s`` 0.5 s / 30 s: backoff for a socket that exists
  but refuses or hangs (a dead QEMU's stale socket file), so it neither spins nor hides a
  restarted QEMU for long.
- ``event_queue_size`` 256: events per VM waiting to be translated. QEMU sends a handful per
  pause; if it ever overflows, events are dropped and the monitor is told to resynchronise.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from autoextend.confbase import Section


class QmpSettings(Section):
    socket_glob: str = "/run/autoextend/qmp/*.sock"
    rescan_interval_s: float = Field(1.0, gt=0.0, le=600.0)
    drive_watch_interval_s: float | None = Field(None, gt=0.0, le=3600.0)
    connect_timeout_s: float = Field(5.0, gt=0.0, le=600.0)
    command_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    reconnect_initial_s: float = Field(0.5, gt=0.0, le=600.0)
    reconnect_max_s: float = Field(30.0, gt=0.0, le=3600.0)
    event_queue_size: int = Field(256, ge=1, le=1 << 20)

    @property
    def drive_watch_s(self) -> float:
        """The drive watch's period: ``drive_watch_interval_s``, or 10 x rescan."""
        if self.drive_watch_interval_s is not None:
            return self.drive_watch_interval_s
        return 10 * self.rescan_interval_s

    @model_validator(mode="after")
    def _backoff_ordered(self) -> QmpSettings:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self
