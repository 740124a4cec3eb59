"""The ``--config`` string every lvm2 command runs with (pure).

It confines lvm2 to the pool's PVs: ``filter`` and ``global_filter`` accept exactly those
device paths and reject everything else, and the devices file, udev device lists, hints and
the persistent cache are off, so a command never scans the host's other disks and never
trusts state another host may have changed. Activation is on only where device-mapper
exists (see :func:`resolve_activation`); the SPM's extends additionally pass
``--driverloaded n`` so they change metadata only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

DM_CONTROL = "/dev/mapper/control"

_DEVICE_RE = re.compile(r"/dev/[A-Za-z0-9_.+:/-]+")
_REGEX_SPECIAL = re.compile(r"([.+])")


def device_filter_entry(device: str) -> str:
    """The accept pattern for exactly one device path, e.g. ``a|^/dev/loop3$|``."""
    if not _DEVICE_RE.fullmatch(device) or "//" in device or device.endswith("/"):
        raise ValueError(f"not an acceptable device path: {device!r}")
    # A bracket class instead of a backslash: no escaping through lvm2's string syntax.
    escaped = _REGEX_SPECIAL.sub(r"[\1]", device)
    return f"a|^{escaped}$|"


@dataclass(frozen=True)
class LvmCommandConfig:
    """What the ``--config`` string is made from.

    ``devices``: the only block devices lvm2 may look at (the pool's PVs).
    ``activation``: False where device-mapper is absent (metadata-only lvm2).
    ``wait_for_locks``: block on a held VG lock (bounded by the command timeout) rather than
    fail at once. ``archive``: keep lvm2's metadata archive in ``/etc/lvm/archive``.
    """

    devices: tuple[str, ...]
    activation: bool = False
    wait_for_locks: bool = True
    archive: bool = False

    def with_devices(self, devices: Sequence[str]) -> LvmCommandConfig:
        merged = tuple(dict.fromkeys((*self.devices, *devices)))
        return LvmCommandConfig(merged, self.activation, self.wait_for_locks, self.archive)


def _list(entries: Sequence[str]) -> str:
    return "[" + ",".join(f'"{entry}"' for entry in entries) + "]"


def render_config(config: LvmCommandConfig) -> str:
    """The ``--config`` value (one line, lvm2 config syntax)."""
    accept = [device_filter_entry(device) for device in config.devices]
    filters = _list([*accept, "r|.*|"])
    flag = int
    return " ".join(
        [
            "devices {",
            f"filter={filters}",
            f"global_filter={filters}",
            "use_devicesfile=0",
            "obtain_device_list_from_udev=0",
            "external_device_info_source=\"none\"",
            'hints="none"',
            "write_cache_state=0",
            "ignore_suspended_devices=1",
            "disable_after_error_count=3",
            "}",
            "global {",
            f"activation={flag(config.activation)}",
            f"wait_for_locks={flag(config.wait_for_locks)}",
            "prioritise_write_locks=1",
            "use_lvmpolld=0",
            "event_activation=0",
            "}",
            "activation {",
            "monitoring=0",
            "}",
            "backup {",
            "backup=0",
            f"archive={flag(config.archive)}",
            # Explicit: the runners use a private LVM_SYSTEM_DIR, which would move these.
            'archive_dir="/etc/lvm/archive"',
            'backup_dir="/etc/lvm/backup"',
            "}",
        ]
    )


def device_mapper_present(control: str = DM_CONTROL) -> bool:
    """True when this host can activate LVs: ``/dev/mapper/control`` exists and its driver
    answers. (libdevmapper creates the node on demand even where the kernel lacks the driver,
    so existence alone is not proof: opening it then fails with ENODEV.)"""
    try:
        fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def resolve_activation(mode: str, control: str = DM_CONTROL) -> bool:
    """``on``/``off`` as given; ``auto``: on exactly where device-mapper is present."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode == "auto":
        return device_mapper_present(control)
    raise ValueError(f"activation mode must be auto, on or off, got {mode!r}")
