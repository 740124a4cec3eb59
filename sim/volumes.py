"""The simulated pool's volumes: sizes in "metadata", every change recorded and checked.

The SPM's backend is built per term with the term, like ``factory.make_pool_backend``; it
stands for lvm2 itself (the metadata on disk), so it applies a change atomically when
called and then takes a while (the command's run time). Every change is checked against the
invariants (``World.check_change``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import anyio

from autoextend.errors import VolumeError
from autoextend.volumes import ExtendResult, VolumeNotFound, VolumeRef

if TYPE_CHECKING:
    from autoextend.lease.service import SpmTerm
    from sim.host import Incarnation
    from sim.world import World


class SimVolumes:
    """The truth: every volume's size, its cap and its owner host."""

    def __init__(self) -> None:
        self.sizes: dict[VolumeRef, int] = {}
        self.caps: dict[VolumeRef, int] = {}
        self.owner: dict[VolumeRef, int] = {}
        self.changes = 0


class SimVolumeBackend:
    """The SPM's volume backend for one term (``VolumeBackend``)."""

    def __init__(
        self, world: World, inc: Incarnation, term: SpmTerm, rng: random.Random
    ) -> None:
        self.world = world
        self.inc = inc
        self.term = term
        self.rng = rng

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        self.world.maybe_freeze_at_write(self.inc, self.term)
        if self.inc.frozen:
            await self.inc.gate()  # a SIGSTOP may land between the server's decision and here
        if not self.inc.alive:
            raise VolumeError("the process is gone")  # a crash is instantaneous
        # The writer's check before every command (as LvmWriter does), then the change.
        self.term.check()
        vols = self.world.volumes
        if volume not in vols.sizes:
            raise VolumeNotFound(str(volume))
        old = vols.sizes[volume]
        changed = size > old
        self.world.check_change(self.inc, self.term, volume, old, size if changed else old)
        if changed:
            vols.sizes[volume] = size
            vols.changes += 1
        # The command's run time (the change above is what a reader of the metadata sees).
        await anyio.sleep(self.rng.uniform(0.01, 0.5))
        await self.inc.gate()
        return ExtendResult(max(old, size), changed)

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        """As lvreduce: to exactly ``size``, never grows (``VolumeBackend.reduce``)."""
        self.world.maybe_freeze_at_write(self.inc, self.term)
        if self.inc.frozen:
            await self.inc.gate()
        if not self.inc.alive:
            raise VolumeError("the process is gone")
        self.term.check()
        vols = self.world.volumes
        if volume not in vols.sizes:
            raise VolumeNotFound(str(volume))
        old = vols.sizes[volume]
        changed = size < old
        self.world.check_change(self.inc, self.term, volume, old, size if changed else old,
                                reduce=True)
        if changed:
            vols.sizes[volume] = size
            vols.changes += 1
            self.world.reduces.shrank(volume, self.inc)
            self.world.reduces.maybe_crash_after_reduce(self.inc)
        await anyio.sleep(self.rng.uniform(0.01, 0.5))
        await self.inc.gate()
        return ExtendResult(min(old, size), changed)

    async def refresh(self, volume: VolumeRef) -> int:
        return self.world.volumes.sizes[volume]

    async def size(self, volume: VolumeRef) -> int:
        return self.world.volumes.sizes[volume]

    def lookup(self, path: str) -> VolumeRef | None:
        return None

    def device_path(self, volume: VolumeRef) -> str:
        return f"/dev/{volume.vg}/{volume.lv}"

    async def metadata_size(self, volume: VolumeRef) -> int:
        """One view: the size is the metadata's."""
        return await self.size(volume)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        return [self.device_path(volume)]

    async def aclose(self) -> None:
        return None
