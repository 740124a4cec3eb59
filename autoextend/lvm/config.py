"""The ``[volumes]`` and ``[lvm]`` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from autoextend.confbase import Section
from autoextend.lvm.lvmconf import device_filter_entry
from autoextend.names import is_valid_name

# The rule ``volumes.backend = lvm`` needs ``lvm.pvs`` (autoextend.validation applies it; the
# factory refuses a backend built without them, with the same words).
PVS_MESSAGE = "must list the pool's PVs for volumes.backend = lvm"


class VolumeSettings(Section):
    # lvm: production (shared VG, lvm2). loop: sparse files on loop devices, for hosts
    # without device-mapper (lab, CI, demo).
    backend: Literal["lvm", "loop"] = "lvm"
    # loop backend: volumes are files <loop_root>/<vg>/<lv>.
    loop_root: str = "/var/lib/autoextend/volumes"
    # loop backend: sizes round up to this, like LVM extents (oVirt storage domains use
    # 128 MiB extents).
    loop_extent_mib: int = Field(128, ge=1, le=1 << 20)
    # loop backend: this host's name when several "hosts" share one machine (the lab): it
    # then refreshes only the loop devices it attached itself, as a real host refreshes
    # only its own dm table. "": every loop device on this machine is this host's.
    loop_host: str = ""

    @field_validator("loop_host")
    @classmethod
    def _host_name(cls, value: str) -> str:
        if value and not is_valid_name(value):
            raise ValueError("must be empty or a name of letters, digits and + _ . -"
                             " (at most 127 characters, not starting with -)")
        return value


class LvmSettings(Section):
    lvm_binary: str = "lvm"
    # The only devices lvm2 may scan: the pool's PVs (a devices filter built per command).
    pvs: tuple[str, ...] = Field((), strict=False)  # lax: TOML gives a list
    # The VGs autoextend manages; device paths of other VGs are not ours.
    vgs: tuple[str, ...] = Field((), strict=False)
    # Each command is killed after this long (vdsm's LVM commands have no timeout; 30 s is
    # far above the ~0.05-0.2 s an lvextend takes and below a lease's renewal budget).
    command_timeout_s: float = Field(30.0, gt=0.0, le=3600.0)
    # At most this many lvm2 processes at once (vdsm: 10).
    max_concurrent: int = Field(10, ge=1, le=100)
    # shell: a persistent `lvm` shell session per VG (at most max_concurrent sessions),
    # each VG's commands one at a time and VGs in parallel (1.5x the extends/s of one
    # process per command on a VG of 500 LVs, see bench/lvm_bench.py; a session is killed
    # and restarted after a timeout, a bad answer or its death). process: one lvm process
    # per command, up to max_concurrent at once.
    runner: Literal["process", "shell"] = "shell"
    # auto: activate/refresh only where device-mapper exists (/dev/mapper/control).
    activation: Literal["auto", "on", "off"] = "auto"
    # Block on a held VG lock (up to command_timeout_s) instead of failing at once (vdsm: 1).
    wait_for_locks: bool = True
    # lvm2's AIO: its per-command teardown (io_destroy) costs ~35 ms of a ~45 ms command on
    # the kernels measured. Off: lvm2 runs with a private LVM_SYSTEM_DIR whose lvm.conf only
    # sets use_aio=0 (the host's lvm.conf is not read; --config carries everything needed).
    # On: the host's lvm.conf is read (process runner).
    use_aio: bool = False
    # Keep lvm2's metadata archive (/etc/lvm/archive) for every change. Off: the SPM
    # changes metadata often and lvm2 keeps metadata copies on every PV anyway.
    archive: bool = False
    # After a reduce or remove, the SPM discards (BLKDISCARD) exactly the extents it freed,
    # so a thin array gets them back (vdsm's "discard after delete"). Off: leave them.
    discard_freed: bool = True

    @field_validator("pvs")
    @classmethod
    def _check_pvs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for device in value:
            device_filter_entry(device)  # raises ValueError for an unusable path
        return value

    @field_validator("vgs")
    @classmethod
    def _check_vgs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not is_valid_name(name):
                raise ValueError(f"invalid VG name {name!r}")
        return value
