"""Snapshot merges through libvirt: a commit's base, from the backing chain (pure, no I/O).

Deleting an older snapshot is a *non-active* ``virsh blockcommit`` (``blockCommit(disk,
base, top)`` with ``top`` below the active image): QEMU copies ``top`` (and whatever lies
between it and ``base``) into ``base``. libvirt shows no ``<mirror>`` for it, emits no event
when it starts, and starts every job with ``on-error=report``: one ENOSPC on the base ends
the merge. So the base must hold the merged data *before* the job writes it (vdsm measures
and extends the base before it starts any merge).

The chain comes from the live XML, each image with its index (the ``N`` of ``vda[N]``)::

    <source dev='/dev/loop3' index='3'/>                      depth 0: the active image
    <backingStore type='block' index='2'>                     depth 1
      <format type='qcow2'/><source dev='/dev/loop2'/>
      <backingStore type='block' index='1'> ... </backingStore>  depth 2
    </backingStore>

Which images a running commit merges, libvirt does not say (``blockJobInfo`` gives the
kind and progress only). :func:`commit_pair` decides, in this order:

1. an intent recorded by ``autoextend volume prepare-merge`` for that disk, if both its
   images are still in the chain (the management named them);
2. a chain of exactly three images: a non-active commit's top is below the active image
   and its base below the top, so top = depth 1 and base = depth 2;
3. otherwise nothing: the job is logged as unwatched (run prepare-merge first).

The base then becomes a job target (``vda[N]``, job ``commit``) like an active commit's
base: a threshold on it, a doubled chunk, and pre-extension to ``qemu-img measure`` of the
top (its chain followed down to the base: the top's data plus the base's). When QEMU's locks
refuse the measure, :func:`with_bound` gives an upper bound instead: the sum of the device
sizes of the images from the top down to the base (no image holds more than its device;
the monitor still caps the growth at the drive's cap). libvirt's ``allocation`` of a backing
image is no help there: it is the highest offset written in this QEMU run, 0 for an image
nothing wrote since the start.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from autoextend.libvirt_backend.domxml import indexed_name, parse_indexed_name
from autoextend.libvirt_backend.stats import MAX_ENTRIES, MAX_SIZE, _uint, clean_path

MAX_DEPTH = 512        # images in one chain: far beyond any real snapshot chain
MAX_INTENTS = 4096     # recorded prepare-merge intents (the oldest is dropped past this)


@dataclass(frozen=True)
class ChainImage:
    index: int      # N in vda[N]
    path: str       # <source dev=...> or file=
    depth: int      # 0: the active image, 1: its backing file, ...
    block: bool     # type='block'
    qcow2: bool     # <format type='qcow2'/> (the active image: <driver type=...>)


@dataclass(frozen=True)
class MergePair:
    """The two ends of one commit: ``top`` is copied (with what lies between) into ``base``."""

    disk: str
    top: ChainImage
    base: ChainImage
    bound: int = 0   # an upper bound of the merged data when it cannot be measured; 0: none

    @property
    def base_name(self) -> str:
        return indexed_name(self.disk, self.base.index)

    @property
    def top_name(self) -> str:
        return indexed_name(self.disk, self.top.index)

    @property
    def active(self) -> bool:
        return self.top.depth == 0


def _index(el: ET.Element) -> int | None:
    raw = el.get("index")
    return int(raw) if raw is not None and raw.isdigit() and len(raw) <= 10 else None


def _image(el: ET.Element, source: ET.Element | None, index: int, depth: int,
           fmt: str) -> ChainImage | None:
    path = (source.get("dev") or source.get("file") or "") if source is not None else ""
    if not path or not clean_path(path):
        return None
    return ChainImage(index, path, depth, el.get("type") == "block", fmt == "qcow2")


def _chain(disk: ET.Element) -> list[ChainImage]:
    source, driver = disk.find("source"), disk.find("driver")
    index = _index(source) if source is not None else None
    if source is None or index is None:
        return []
    top = _image(disk, source, index, 0, driver.get("type", "") if driver is not None else "")
    if top is None:
        return []
    chain = [top]
    node = disk.find("backingStore")
    while node is not None and len(chain) < MAX_DEPTH:
        index, fmt = _index(node), node.find("format")
        image = None if index is None else _image(
            node, node.find("source"), index, len(chain), fmt.get("type", "") if fmt is not None
            else "")
        if image is None:
            break  # the end (<backingStore/>), or an image we cannot name
        chain.append(image)
        node = node.find("backingStore")
    return chain


def parse_chains(xml: str) -> dict[str, list[ChainImage]]:
    """{disk target: its backing chain, active image first}; disks with a ``<mirror>`` (an
    active commit or a copy: ``jobs.py`` watches those) and unparsable XML give nothing."""
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError, RecursionError):
        return {}
    chains: dict[str, list[ChainImage]] = {}
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        name = target.get("dev", "") if target is not None else ""
        if name and disk.find("mirror") is None and disk.find("readonly") is None:
            chains[name] = _chain(disk)
    return chains


def may_merge(chain: list[ChainImage]) -> bool:
    """A non-active commit needs a top below the active image and a base below it."""
    return len(chain) >= 3


class MergeChoiceError(ValueError):
    """The images a prepare-merge names are not a top and a base of the disk's chain."""


def choose(disk: str, chain: list[ChainImage], top: int | None,
           base: int | None) -> MergePair:
    """The pair ``prepare-merge DISK[top] --base base`` names: ``top`` None is the active
    image; ``base`` None is the image right below the top.

    Raises:
        MergeChoiceError: no such image in the chain, the base is not below the top, or the
            base is no writable qcow2 on a block device (nothing autoextend grows).
    """
    by_index = {image.index: image for image in chain}
    if not chain:
        raise MergeChoiceError(f"{disk}: no backing chain in the live XML")
    top_image = chain[0] if top is None else by_index.get(top)
    if top_image is None:
        raise MergeChoiceError(f"{indexed_name(disk, top or 0)}: no such image in the chain"
                               f" ({_listing(disk, chain)})")
    if base is None:
        below = [i for i in chain if i.depth == top_image.depth + 1]
        if not below:
            raise MergeChoiceError(f"{indexed_name(disk, top_image.index)} has no backing"
                                   " image to merge into")
        base_image = below[0]
    else:
        found = by_index.get(base)
        if found is None:
            raise MergeChoiceError(f"{indexed_name(disk, base)}: no such image in the chain"
                                   f" ({_listing(disk, chain)})")
        base_image = found
    if base_image.depth <= top_image.depth:
        raise MergeChoiceError(f"{indexed_name(disk, base_image.index)} is not below"
                               f" {indexed_name(disk, top_image.index)} in the chain")
    if not (base_image.block and base_image.qcow2):
        raise MergeChoiceError(f"{indexed_name(disk, base_image.index)} is not a qcow2 image"
                               " on a block device: autoextend does not grow it")
    return MergePair(disk, top_image, base_image)


def _listing(disk: str, chain: list[ChainImage]) -> str:
    return ", ".join(indexed_name(disk, i.index) for i in chain[:16])


def parse_drive(drive: str) -> tuple[str, int | None] | None:
    """``vda`` -> (vda, None: the active image); ``vda[2]`` -> (vda, 2); None otherwise."""
    named = parse_indexed_name(drive)
    if named is not None:
        return named
    if 0 < len(drive) <= 64 and drive.isascii() and drive.isalnum():
        return drive, None
    return None


class MergeIntents:
    """What prepare-merge was told, by (VM, disk): the indexes of the top and the base. A
    later commit on that disk is taken to merge them while both are still in its chain."""

    def __init__(self) -> None:
        self._intents: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    def record(self, vm: str, pair: MergePair) -> None:
        key = (vm, pair.disk)
        self._intents.pop(key, None)
        self._intents[key] = (pair.top.index, pair.base.index)
        while len(self._intents) > MAX_INTENTS:
            self._intents.popitem(last=False)

    def forget(self, vm: str) -> None:
        for key in [k for k in self._intents if k[0] == vm]:
            del self._intents[key]

    def get(self, vm: str, disk: str) -> tuple[int, int] | None:
        return self._intents.get((vm, disk))


def commit_pair(disk: str, chain: list[ChainImage],
                intent: tuple[int, int] | None) -> MergePair | None:
    """The pair a running non-active commit on ``disk`` merges (see the module docstring),
    or None when it cannot be known."""
    by_index = {image.index: image for image in chain}
    if intent is not None:
        top, base = by_index.get(intent[0]), by_index.get(intent[1])
        if top is not None and base is not None and 0 < top.depth < base.depth:
            return MergePair(disk, top, base)
    if len(chain) == 3:
        return MergePair(disk, chain[1], chain[2])
    return None


def with_bound(pair: MergePair, chain: list[ChainImage],
               stats: Mapping[str, Any]) -> MergePair:
    """``pair`` with ``bound``: the device sizes (block stats ``physical``) of the images
    from its top down to its base, summed; 0 when one of them has no stats entry."""
    count = min(_uint(stats, "block.count") or 0, MAX_ENTRIES)
    physical: dict[int, int] = {}
    for i in range(count):
        index = _uint(stats, f"block.{i}.backingIndex")
        size = _uint(stats, f"block.{i}.physical")
        if stats.get(f"block.{i}.name") == pair.disk and index is not None and size:
            physical[index] = size
    merged = [i.index for i in chain if pair.top.depth <= i.depth <= pair.base.depth]
    if not merged or any(index not in physical for index in merged):
        return pair
    return replace(pair, bound=min(sum(physical[index] for index in merged), MAX_SIZE))
