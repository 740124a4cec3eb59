"""Backups through libvirt: the images a ``virDomainBackupBegin`` job writes (pure parsing).

A backup writes an image that is in no disk's chain and has no ``<mirror>``: the *scratch*
of a pull-mode backup (QEMU's copy-before-write filter copies each guest overwrite of data
older than the backup into it, so it fills as the guest rewrites the disk) or the *target*
of a push-mode backup (the whole disk is copied into it). The domain XML does not show it;
the backup XML does (``virDomainBackupGetXMLDesc``, libvirt 9.0)::

    <domainbackup mode='pull'>
      <server transport='unix' socket='/run/backup.sock'/>
      <disks>
        <disk name='vda' backup='yes' type='block' backupmode='full' exportname='vda'
              index='2'>
          <driver type='qcow2'/>
          <scratch dev='/dev/lv/scratch'/>          (push mode: <target dev=.../>)
        </disk>
      </disks>
    </domainbackup>

``index`` is the image's index: ``vda[2]`` is what ``setBlockThreshold`` arms (libvirt >=
7.0 supports a threshold on a scratch) and the block stats list it as an entry of ``vda``
with ``backingIndex`` 2. That stats entry is also how a backup is *noticed* without an extra
call per look: :func:`undescribed` names the stats entries whose index the domain XML does
not describe (no ``<source>`` or ``<backingStore>`` of that disk, its ``<mirror>``
included, has it). Only then is the backup XML asked for.

The backup XML comes from libvirtd, not from the guest, but it is still parsed strictly and
within bounds: :func:`parse_backup` refuses what is not a backup XML with
:class:`BackupXmlError` (one line), like ``domxml.parse_disks``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoextend.libvirt_backend.domxml import DiskFacts, indexed_name
from autoextend.libvirt_backend.jobs import BackupSource, Mirror
from autoextend.libvirt_backend.stats import MAX_ENTRIES, _uint, clean_path

MAX_XML = 1 << 20      # bytes of backup XML: far beyond any real backup of 4096 disks
MAX_DISKS = 4096       # <disk> elements in one backup
MODES = ("pull", "push")
_NUMBER_RE = re.compile(r"[0-9]{1,10}\Z")
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}\Z")


class BackupXmlError(ValueError):
    """The backup XML could not be parsed or is not what libvirt writes."""


@dataclass(frozen=True)
class BackupImage:
    """The image one disk's backup writes: a pull-mode scratch or a push-mode target."""

    disk: str          # <disk name=...>: vda
    mode: str          # pull | push
    index: int | None  # <disk index=...>: N in vda[N]; None when libvirt gives none
    path: str          # <scratch|target dev=...> or file=
    block: bool        # <disk type='block'>
    qcow2: bool        # <driver type='qcow2'/>

    @property
    def managed_kind(self) -> bool:
        """A qcow2 image on a block device with an index: one autoextend can watch."""
        return self.block and self.qcow2 and self.index is not None


def parse_backup(xml: str) -> list[BackupImage]:
    """The image of each disk the running backup copies (``backup='no'`` disks, and disks
    whose image libvirt does not name, are left out), in document order.

    Raises:
        BackupXmlError: too long, not XML, not a ``<domainbackup>``, an unknown mode, or a
            disk with a bad name, index or path.
    """
    if len(xml) > MAX_XML:
        raise BackupXmlError(f"backup XML is {len(xml)} characters (at most {MAX_XML})")
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError, RecursionError) as err:
        raise BackupXmlError(f"backup XML does not parse: {str(err)[:200]}") from None
    if root.tag != "domainbackup":
        raise BackupXmlError(f"root element is <{root.tag[:64]}>, not <domainbackup>")
    mode = root.get("mode", "push")  # libvirt's default
    if mode not in MODES:
        raise BackupXmlError(f"backup mode {mode[:32]!r} is neither pull nor push")
    disks = root.findall("./disks/disk")
    if len(disks) > MAX_DISKS:
        raise BackupXmlError(f"backup XML has {len(disks)} disks (at most {MAX_DISKS})")
    image_tag = "scratch" if mode == "pull" else "target"
    found: list[BackupImage] = []
    for disk in disks:
        name = disk.get("name", "")
        if not _NAME_RE.match(name):
            raise BackupXmlError(f"backup disk name {name[:64]!r} is no disk target")
        if disk.get("backup", "yes") != "yes":
            continue
        raw = disk.get("index")
        if raw is not None and not _NUMBER_RE.match(raw):
            raise BackupXmlError(f"backup disk {name}: index {raw[:32]!r} is not a number")
        image = disk.find(image_tag)
        if image is None:
            continue  # libvirt chose the image itself (a pull-mode scratch file): unnamed
        path = image.get("dev") or image.get("file") or ""
        if not _absolute(path):
            raise BackupXmlError(f"backup disk {name}: {image_tag} path {path[:64]!r} is"
                                 " not a clean absolute path")
        driver = disk.find("driver")
        found.append(BackupImage(
            disk=name, mode=mode, index=int(raw) if raw is not None else None, path=path,
            block=disk.get("type") == "block",
            qcow2=driver is not None and driver.get("type") == "qcow2"))
    return found


def job_mirrors(images: list[BackupImage]) -> list[Mirror]:
    """The images autoextend watches (qcow2 on a block device, with an index) as job
    targets of kind ``backup``: ``jobs.job_targets`` gives them their numbers."""
    return [Mirror(i.disk, "backup", i.index, i.path)
            for i in images if i.managed_kind and i.index is not None]


def push_sources(images: list[BackupImage], disks: list[DiskFacts]
                 ) -> dict[str, BackupSource]:
    """{push target's drive name (``vda[N]``): the source of the disk it backs up}, for the
    watched push targets (``jobs.BackupNeeds`` sizes them from it); a pull-mode scratch is
    not named: its need is not known up front."""
    by_target = {d.target: d for d in disks}
    found: dict[str, BackupSource] = {}
    for image in images:
        disk = by_target.get(image.disk)
        if image.mode == "push" and image.managed_kind and image.index is not None \
                and disk is not None:
            found[indexed_name(image.disk, image.index)] = BackupSource(disk.path,
                                                                        disk.driver_type)
    return found


def _absolute(path: str) -> bool:
    """An absolute path of printable characters within bounds (what libvirt writes)."""
    return (clean_path(path) and path.startswith("/")
            and all(ch.isprintable() for ch in path))


def described(xml: str) -> dict[str, set[int]]:
    """{disk target: every image index the domain XML shows for it}: its ``<source>``, each
    ``<backingStore>`` and its ``<mirror>``'s; {} on XML that does not parse (the drive
    parser reports that)."""
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError, RecursionError):
        return {}
    shown: dict[str, set[int]] = {}
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        name = target.get("dev", "") if target is not None else ""
        if not name:
            continue
        indexes = shown.setdefault(name, set())
        for el in disk.iter():
            raw = el.get("index") if el.tag in ("source", "backingStore") else None
            if raw is not None and _NUMBER_RE.match(raw):
                indexes.add(int(raw))
    return shown


def undescribed(stats: Mapping[str, Any], shown: Mapping[str, set[int]]) -> set[str]:
    """The block stats entries (``vda[N]``) of an image the domain XML does not describe:
    during a backup, its scratch or target. Empty when no job writes an image outside the
    disks' chains, which is when no backup XML needs to be asked for."""
    count = min(_uint(stats, "block.count") or 0, MAX_ENTRIES)
    found: set[str] = set()
    for i in range(count):
        name = stats.get(f"block.{i}.name")
        index = _uint(stats, f"block.{i}.backingIndex")
        if isinstance(name, str) and index is not None and index not in shown.get(name, ()):
            found.add(f"{name[:64]}[{index}]")
    return found
