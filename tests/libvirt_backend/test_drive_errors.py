"""Disks in error from ``diskErrors()`` and the domain XML (pure)."""

from __future__ import annotations

import libvirt

from autoextend.libvirt_backend.domxml import DiskFacts
from autoextend.libvirt_backend.events import drive_errors
from autoextend.monitor.protocols import DriveIoError


def disk(target: str, path: str, index: int | None, driver: str = "qcow2") -> DiskFacts:
    return DiskFacts(target, "block", "disk", driver, False, path, index)


def test_named_like_the_monitors_drives_raw_included() -> None:
    errors = {
        "vda": libvirt.VIR_DOMAIN_DISK_ERROR_NONE,
        "vdb": libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE,
        "vdc": libvirt.VIR_DOMAIN_DISK_ERROR_UNSPEC,
        "vdz": libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE,  # not in the XML: name only
    }
    disks = [disk("vda", "/dev/loop1", 1), disk("vdb", "/dev/loop2", 2),
             disk("vdc", "/var/tmp/raw.img", None, driver="raw")]
    assert drive_errors(errors, disks) == (
        DriveIoError("vdb[2]", "/dev/loop2", True),
        DriveIoError("vdc", "/var/tmp/raw.img", False),
        DriveIoError("vdz", "", True),
    )
