"""A drive's write error policy over QMP (QEMU's ``werror``), for the error-policy audit.

With ``report`` or ``ignore`` an ENOSPC is handed to the guest as an I/O error (the write is
lost); with ``stop`` or ``enospc`` (QEMU's default) the VM pauses. Where QEMU keeps it:

- the device's own property, ``-device virtio-blk-pci,...,werror=report``: QMP ``qom-get``
  of the device's QOM path (``query-block``'s ``qdev``), property ``werror``;
- ``auto`` there means the device defers to its BlockBackend, which a legacy
  ``-drive ...,id=d0,werror=report`` sets and QMP shows nowhere: it is read from QEMU's
  command line (``/proc/PID/cmdline`` of the QEMU whose arguments name this QMP socket), the
  ``-drive`` whose ``id`` is the device name ``query-block`` reports.

Read once per drive per session (the policy does not change while QEMU runs): one
``qom-get`` per drive, and for ``auto`` one scan of ``/proc`` per session. Anything
unreadable is "" (unknown), never a guess.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

WERROR = frozenset({"stop", "enospc", "report", "ignore"})
MAX_CMDLINE = 1 << 20


def split_options(text: str) -> dict[str, str]:
    """QEMU's ``key=value,key=value`` option string (``,,`` is a literal comma); parts with
    no ``=`` (an implied key) are left out."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "," and text[i + 1:i + 2] == ",":
            current.append(",")
            i += 2
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return dict(part.split("=", 1) for part in parts if "=" in part)


def legacy_werror(argv: Sequence[str], drive_id: str) -> str:
    """``werror`` of the ``-drive`` with ``id=drive_id`` on a QEMU command line ("" if none,
    or not one of :data:`WERROR`)."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("-drive", "--drive"):
            opts = split_options(value)
            if opts.get("id") == drive_id:
                found = opts.get("werror", "")
                return found if found in WERROR else ""
    return ""


def resolve(device_value: object, legacy: str) -> str:
    """The drive's policy from the device's ``werror`` (and, for ``auto``, the legacy one)."""
    if device_value == "auto":
        return legacy
    return device_value if isinstance(device_value, str) and device_value in WERROR else ""


def qemu_argv(socket_path: str, proc: Path = Path("/proc")) -> list[str] | None:
    """The command line of the QEMU whose arguments name ``socket_path`` (its QMP socket),
    or None. Blocking (reads /proc): call it in a worker thread."""
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "cmdline"), "rb") as f:
                raw = f.read(MAX_CMDLINE)
        except OSError:
            continue  # gone, or not ours to read
        argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if argv and "qemu" in os.path.basename(argv[0]) and any(
                socket_path in arg for arg in argv[1:]):
            return argv
    return None
