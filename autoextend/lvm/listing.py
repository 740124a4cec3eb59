"""Every volume of a pool VG, for the SPM's committed-space scan (``volumes.ListsVolumes``;
``capacity/committed.py`` has the scan). Reads only."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anyio

from autoextend.lvm.errors import NoSuchVolumeGroup
from autoextend.lvm.loop_backend import vg_capacity
from autoextend.lvm.names import lvm_device_path
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.vsize import BadVsizeTag, vsize_from_tags
from autoextend.names import check_name
from autoextend.volumes import ListedVolume, VgVolumes, VolumeRef


def _tag(tags: Sequence[str]) -> tuple[int | None, str]:
    try:
        return vsize_from_tags(tags), ""
    except BadVsizeTag as exc:
        return None, str(exc)


class LvmLister:
    """One read-only ``vgs`` and one ``lvs`` per VG (every LV, with its tags); an LV's
    ``qemu-img`` path is ``/dev/VG/LV`` (present only where the LV is active)."""

    def __init__(self, reader: LvmReader) -> None:
        self.reader = reader

    async def vg_volumes(self, vg: str) -> VgVolumes | None:
        try:
            info = await self.reader.vg(vg)
            lvs = await self.reader.lvs(vg)
        except NoSuchVolumeGroup:
            return None
        out = []
        for lv in lvs:
            vsize, problem = _tag(lv.tags)
            out.append(ListedVolume(lv.name, (lv.uuid, lv.size), vsize, problem,
                                    lvm_device_path(VolumeRef(lv.vg, lv.name))))
        return VgVolumes(vg, info.size, tuple(out))


class LoopLister:
    """The loop backend's VGs: ``<root>/<vg>/<lv>`` files (no tags: each file is measured
    with ``qemu-img``); a VG's size is its capacity (``.vg_size``), and a VG without one
    is left out (it has no size to commit against)."""

    def __init__(self, root: str) -> None:
        self.root = root

    async def vg_volumes(self, vg: str) -> VgVolumes | None:
        vg_dir = os.path.join(self.root, check_name("VG", vg))

        def scan() -> VgVolumes | None:
            if not os.path.isdir(vg_dir):
                return None
            size = vg_capacity(vg_dir)
            if size is None:
                return None
            out = []
            with os.scandir(vg_dir) as entries:
                for e in entries:
                    if e.name.startswith(".") or not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                    out.append(ListedVolume(e.name, (st.st_ino, st.st_size, st.st_mtime_ns),
                                            None, "", e.path))
            return VgVolumes(vg, size, tuple(sorted(out, key=lambda v: v.lv)))

        return await anyio.to_thread.run_sync(scan)
