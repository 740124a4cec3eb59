"""The disk facts autoextend needs from a live domain XML (pure; no libvirt calls).

Block stats say how full an image is, but not its format, whether it is read-only or whether
it sits on a block device. Those come from ``<devices><disk>`` of the live XML::

    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' error_policy='enospace' rerror_policy='report'/>
      <source dev='/dev/loop3' index='1'/>
      <target dev='vda' bus='virtio'/>
    </disk>

``index`` on ``<source>`` is the top image's index: the ``N`` in ``vda[N]``. Only writable
qcow2 images on block devices are monitorable (the chunked drives of vdsm).

``error_policy`` is the disk's ``werror``: with ``report`` or ``ignore`` an ENOSPC reaches the
guest as an I/O error (ext4 then remounts read-only, and the failed write is lost) instead
of pausing the VM for autoextend to extend and resume (issue 29, the error-policy audit).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

# Targets are short (vda, sdb, hdc); image indexes small. Bounded so int() never sees a
# 5,000-digit number (which raises ValueError, not DomainXmlError).
_INDEXED_RE = re.compile(r"([A-Za-z][A-Za-z0-9]{0,63})\[([0-9]{1,10})\]\Z")
_NUMBER_RE = re.compile(r"[0-9]{1,10}\Z")


def indexed_name(target: str, index: int) -> str:
    """``vda``, 1 -> ``vda[1]``: libvirt's name for one image of a disk's chain."""
    return f"{target}[{index}]"


def parse_indexed_name(name: str) -> tuple[str, int] | None:
    """``vda[1]`` -> (``vda``, 1); None for a plain target (``vda``) or anything else."""
    match = _INDEXED_RE.match(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True)
class DiskFacts:
    """One ``<disk>`` of a domain: what the stats do not say."""

    target: str            # <target dev=...>: vda
    disk_type: str         # <disk type=...>: block | file | network | volume
    device: str            # <disk device=...>: disk | cdrom | floppy | lun
    driver_type: str       # <driver type=...>: qcow2 | raw | ""
    readonly: bool
    path: str              # <source dev=...> or <source file=...>; "" when absent
    index: int | None      # <source index=...>: the top image's index
    error_policy: str = ""   # <driver error_policy=...>: stop|report|ignore|enospace; "" unset
    rerror_policy: str = ""  # <driver rerror_policy=...>: stop|report|ignore; "" unset

    @property
    def write_error_reaches_guest(self) -> bool:
        """An ENOSPC on this disk goes to the guest as an I/O error instead of pausing the VM
        (``report`` or ``ignore``). Unset means QEMU's default, ``enospc``: it pauses."""
        return self.error_policy in WRITE_ERRORS_TO_GUEST

    @property
    def monitorable(self) -> bool:
        """A writable qcow2 image on a block device: the kind that needs extending."""
        return (
            self.disk_type == "block"
            and self.device == "disk"
            and self.driver_type == "qcow2"
            and not self.readonly
        )


WRITE_ERRORS_TO_GUEST = frozenset({"report", "ignore"})
MAX_POLICY = 32  # longer is no libvirt policy name; kept out of logs and status


def _policy(driver: ET.Element | None, name: str) -> str:
    value = driver.get(name, "") if driver is not None else ""
    return value if len(value) <= MAX_POLICY and value.isascii() else "invalid"


def error_policies(disks: list[DiskFacts]) -> dict[str, tuple[str, str]]:
    """{drive: (error_policy, rerror_policy)} of each monitorable disk, named like the
    monitor's drives (``vda[N]`` when the XML gives the top image's index)."""
    return {
        (indexed_name(d.target, d.index) if d.index is not None else d.target):
            (d.error_policy, d.rerror_policy)
        for d in disks if d.monitorable
    }


class DomainXmlError(ValueError):
    """The domain XML could not be parsed or lacks what a disk must have."""


def parse_disks(xml: str) -> list[DiskFacts]:
    """Every ``<disk>`` under ``<devices>`` with a target, in document order.

    Raises:
        DomainXmlError: not XML, not a domain, or a disk whose ``index`` is not a number.
    """
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError, RecursionError) as err:
        raise DomainXmlError(f"domain XML does not parse: {str(err)[:200]}") from None
    if root.tag != "domain":
        raise DomainXmlError(f"root element is <{root.tag}>, not <domain>")
    disks: list[DiskFacts] = []
    for disk in root.iterfind("./devices/disk"):
        target_el = disk.find("target")
        target = target_el.get("dev", "") if target_el is not None else ""
        if not target:
            continue  # a disk without a target cannot be addressed; nothing to monitor
        driver = disk.find("driver")
        source = disk.find("source")
        index: int | None = None
        path = ""
        if source is not None:
            path = source.get("dev") or source.get("file") or ""
            raw_index = source.get("index")
            if raw_index is not None:
                if not _NUMBER_RE.match(raw_index):
                    raise DomainXmlError(
                        f"disk {target[:64]}: source index {raw_index[:32]!r} is not a number")
                index = int(raw_index)
        disks.append(
            DiskFacts(
                target=target,
                disk_type=disk.get("type", ""),
                device=disk.get("device", "disk"),
                driver_type=driver.get("type", "") if driver is not None else "",
                readonly=disk.find("readonly") is not None,
                path=path,
                index=index,
                error_policy=_policy(driver, "error_policy"),
                rerror_policy=_policy(driver, "rerror_policy"),
            )
        )
    return disks
