"""Where a host reads its VGs' size and free space (local mode, and the SPM in mailbox mode).

* ``lvm``: one read-only ``vgs`` report for all the VGs (``vg_size``, ``vg_free``).
* ``loop``: a loop "VG" with a capacity (``<root>/<vg>/.vg_size``): that capacity, and
  what its LVs' files do not use. A loop VG without a capacity has no figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import anyio

from autoextend.capacity.figures import VgFigures
from autoextend.lvm.loop_backend import LoopVolumeBackend, vg_capacity, vg_used
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.names import is_valid_name
from autoextend.volumes import innermost


class VgSource(Protocol):
    async def figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        """Figures of those of ``vgs`` that exist (others are left out). Raises
        AutoextendError (or OSError) when the look fails as a whole."""
        ...


class LvmSource:
    def __init__(self, backend: LvmVolumeBackend) -> None:
        self.backend = backend

    async def figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        if not vgs:
            return []
        found = await self.backend.reader.vgs(*vgs)
        return [VgFigures(vg.name, vg.size, vg.free) for vg in found]


def _loop_figures(root: str, vgs: Sequence[str]) -> list[VgFigures]:
    out = []
    for vg in vgs:
        if not is_valid_name(vg):
            continue
        vg_dir = os.path.join(root, vg)
        try:
            capacity = vg_capacity(vg_dir)
            if capacity is None:
                continue
            used = vg_used(vg_dir)
        except FileNotFoundError:
            continue
        out.append(VgFigures(vg, capacity, max(0, capacity - used)))
    return out


class LoopSource:
    def __init__(self, backend: LoopVolumeBackend) -> None:
        self.backend = backend

    async def figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        return await anyio.to_thread.run_sync(_loop_figures, self.backend.root, list(vgs))


def source_for(backend: object) -> VgSource | None:
    """The figures source of a volume backend (looking through the reserve guard), or None."""
    base = innermost(backend)
    if isinstance(base, LvmVolumeBackend):
        return LvmSource(base)
    if isinstance(base, LoopVolumeBackend):
        return LoopSource(base)
    return None
