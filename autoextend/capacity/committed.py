"""Mailbox mode: the SPM sums the virtual sizes of every volume in the pool's VGs and
publishes them (``committed_record.py``); ``autoextend pool admit`` reads them on any host.

Every ``[capacity] committed_interval_s`` the host holding the SPM term lists each pool
VG's volumes (``volumes.ListsVolumes``, ``lvm/listing.py``: one read-only ``lvs`` per VG
with lvm, a directory scan with loop volumes) and takes each one's virtual size from its
``autoextend.vsize`` tag (``lvm/vsize.py``), else from ``qemu-img info -U`` of its device
(lvm: ``/dev/VG/LV``, only where the LV is active on the SPM host) or file (loop). A
volume neither gives is unknown (counted apart, never guessed: ``admission.py``). A
``qemu-img`` answer is reused while the volume is the same (lvm: LV uuid and size; loop:
inode, size and mtime), for at most 10 intervals, so a pool of untagged volumes costs one
``qemu-img`` per volume per 10 intervals. The term is checked before every write; a host
that is not the SPM writes nothing. A scan that fails is logged once (until one works
again) and retried next interval. With ``[capacity] enabled = false`` nothing is published.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio

from autoextend.capacity import committed_record
from autoextend.capacity.admission import VgCommitted, VolumeVsize, sum_committed
from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.published import PoolMember
from autoextend.clock import Clock
from autoextend.errors import AutoextendError, NotSpmError
from autoextend.logs import Repeats, get_logger
from autoextend.volumes import ListsVolumes

log = get_logger("capacity")
QEMU_IMG_TIMEOUT_S = 30.0
REUSE_INTERVALS = 10
MAX_VSIZE = (1 << 63) - 1


#: path -> (virtual size, "") or (None, why not).
VsizeProbe = Callable[[str], Awaitable[tuple[int | None, str]]]


def parse_info(text: str) -> int:
    """``virtual-size`` from ``qemu-img info --output=json``; ValueError otherwise."""
    doc = json.loads(text)
    size = doc.get("virtual-size") if isinstance(doc, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_VSIZE:
        raise ValueError(f"no usable virtual-size ({size!r})")
    return size


async def qemu_img_vsize(path: str) -> tuple[int | None, str]:
    """``qemu-img info -U -f qcow2``: the image's virtual size, or why it has none. A path
    that does not exist here (an LV not active on this host) is not tried."""
    if not await anyio.to_thread.run_sync(os.path.exists, path):
        return None, "no tag, and no device to open on this host (LV not active here)"
    try:
        with anyio.fail_after(QEMU_IMG_TIMEOUT_S):
            done = await anyio.run_process(
                ["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", path], check=False)
    except (OSError, TimeoutError) as exc:
        return None, f"qemu-img info failed: {exc or 'timed out'}"
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        return None, f"qemu-img info: {(err[-1] if err else 'failed')[:200]}"
    try:
        return parse_info(done.stdout.decode(errors="replace")), ""
    except ValueError as exc:
        return None, f"qemu-img info: {exc}"


class CommittedScanner:
    """The committed space of VGs (see the module docs)."""

    def __init__(self, lister: ListsVolumes, clock: Clock, *,
                 probe: VsizeProbe = qemu_img_vsize, reuse_s: float = 300.0) -> None:
        self.lister = lister
        self.clock = clock
        self.probe = probe
        self.reuse_s = reuse_s
        self.probes = 0
        self.unknown: list[str] = []
        self._cache: dict[tuple[str, str], tuple[tuple[object, ...], VolumeVsize, float]] = {}

    async def volumes(self, vg: str) -> tuple[int, list[VolumeVsize]] | None:
        """The VG's size and each volume's virtual size (None: no such VG)."""
        listed = await self.lister.vg_volumes(vg)
        if listed is None:
            return None
        now = self.clock.now()
        out = []
        for v in listed.volumes:
            if v.tag_vsize is not None:
                out.append(VolumeVsize(v.lv, v.tag_vsize, "tag"))
                continue
            key = (vg, v.lv)
            hit = self._cache.get(key)
            if hit is not None and hit[0] == v.ident and now - hit[2] < self.reuse_s:
                out.append(hit[1])
                continue
            vsize, why = await self.probe(v.path)
            self.probes += 1
            if v.tag_problem:
                why = f"{v.tag_problem}; {why}" if vsize is None else why
            got = VolumeVsize(v.lv, vsize, "qemu-img" if vsize is not None else "unknown", why)
            self._cache[key] = (v.ident, got, now)
            out.append(got)
        alive = {(vg, v.lv) for v in listed.volumes}
        for key in [k for k in self._cache if k[0] == vg and k not in alive]:
            del self._cache[key]
        return listed.size, out

    async def scan(self, vgs: Sequence[str]) -> list[VgCommitted]:
        """Each VG's committed space; :attr:`unknown` lists the volumes of unknown virtual
        size ("vg/lv: why") of this scan."""
        out = []
        unknown = []
        for vg in sorted(set(vgs)):
            found = await self.volumes(vg)
            if found is not None:
                out.append(sum_committed(vg, found[0], found[1]))
                unknown += [f"{vg}/{v.lv}: {v.why}" for v in found[1] if v.vsize is None]
        self.unknown = unknown
        return out


class CommittedPublisher:
    """While this host holds the SPM term: a scan and one record write per
    ``committed_interval_s``."""

    def __init__(self, cluster: PoolMember, scanner: CommittedScanner,
                 settings: CapacitySettings, vgs: Sequence[str], area_offset: int,
                 clock: Clock, wall: Callable[[], float] = time.time) -> None:
        self.cluster = cluster
        self.scanner = scanner
        self.settings = settings
        self.vgs = tuple(vgs)
        self.area_offset = area_offset
        self.clock = clock
        self.wall = wall
        self.seq = 0
        self.writes = 0
        self._repeats = Repeats(log, clock.now)

    async def publish_once(self) -> bool:
        """Scan and write the record if this host holds the SPM term; whether it wrote."""
        storage, lease = self.cluster.storage, self.cluster.lease
        term = None if lease is None else lease.term
        if storage is None or term is None:
            return False
        figs = await self.scanner.scan(self.vgs)
        self.seq += 1
        data = committed_record.encode(committed_record.CommittedRecord(
            self.cluster.host_id, self.seq, int(self.wall() * 1000), tuple(figs)),
            storage.sector_size)
        term.check()  # only the SPM of this very term writes the record
        await storage.write(committed_record.record_offset(self.area_offset,
                                                           storage.sector_size), data)
        self.writes += 1
        unknown = sum(f.unknown for f in figs)
        if unknown:
            self._repeats.warning("volumes of unknown virtual size in the committed space",
                                  unknown=unknown, volumes=self.scanner.unknown[:10])
        else:
            self._repeats.clear("volumes of unknown virtual size in the committed space")
        return True

    async def run(self) -> None:
        while True:
            wrote = False
            try:
                self.scanner.reuse_s = REUSE_INTERVALS * self.settings.committed_interval_s
                wrote = await self.publish_once()
                self._repeats.clear("committed space not published")
            except NotSpmError:
                pass  # the term ended between the scan and the write: nothing written
            except (AutoextendError, OSError, ValueError) as exc:
                self._repeats.warning("committed space not published", error=str(exc))
            # Not the SPM (yet): look again at the VG record's pace, so a new SPM publishes
            # soon after its takeover.
            await self.clock.sleep(self.settings.committed_interval_s if wrote
                                   else min(self.settings.publish_interval_s,
                                            self.settings.committed_interval_s))
