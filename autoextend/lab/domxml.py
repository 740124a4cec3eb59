"""libvirt domain XML for the lab guest: the same VM the QEMU launcher runs, through libvirt.

Direct kernel boot, TCG (``type='qemu'``), qcow2 disks on block devices with the ENOSPC pause
policy (libvirt spells it ``enospace``), serial console to a file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from autoextend.lab.guest import GuestJob, build_cmdline
from autoextend.lab.guestimage import GuestImage

EMULATOR = "/usr/bin/qemu-system-x86_64"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def domain_xml(
    name: str,
    guest: GuestImage,
    devices: Sequence[str],
    *,
    cmdline: str,
    serial_log: str | Path,
    memory_mib: int = 256,
    vcpus: int = 1,
    error_policy: str = "enospace",
    rerror_policy: str = "report",
    files: bool = False,
) -> str:
    """A domain running the lab guest with ``devices`` as vda, vdb, ... (qcow2 on block; with
    ``files``, raw images in files, such as a :mod:`~autoextend.lab.faultfs` mount's)."""
    if not 0 < len(devices) <= 26:
        raise ValueError("a lab domain needs 1..26 disks")
    dom = ET.Element("domain", type="qemu")
    _sub(dom, "name", name)
    _sub(dom, "memory", str(memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(vcpus))
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="q35")
    _sub(os_el, "kernel", str(guest.kernel))
    _sub(os_el, "initrd", str(guest.initrd))
    _sub(os_el, "cmdline", cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(dom, event, "destroy")
    dev = _sub(dom, "devices")
    _sub(dev, "emulator", EMULATOR)
    for index, device in enumerate(devices):
        disk = _sub(dev, "disk", type="file" if files else "block", device="disk")
        _sub(disk, "driver", name="qemu", type="raw" if files else "qcow2", cache="none",
             io="threads" if files else "native", error_policy=error_policy,
             rerror_policy=rerror_policy)
        if files:
            _sub(disk, "source", file=device)
        else:
            _sub(disk, "source", dev=device)
        _sub(disk, "target", dev="vd" + chr(ord("a") + index), bus="virtio")
    serial = _sub(dev, "serial", type="file")
    _sub(serial, "source", path=str(serial_log))
    _sub(serial, "target", port="0")
    _sub(dev, "controller", type="usb", model="none")
    _sub(dev, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def guest_domain_xml(name: str, guest: GuestImage, devices: Sequence[str], job: GuestJob,
                     serial_log: str | Path, **kwargs: int | str | bool) -> str:
    """:func:`domain_xml` running ``job`` (kernel command line from :func:`build_cmdline`)."""
    return domain_xml(name, guest, devices, cmdline=build_cmdline(job), serial_log=serial_log,
                      **kwargs)  # type: ignore[arg-type]
