"""The honest cap at run time: ``qemu-img measure`` figures, asked once per (capacity,
cluster size), and a policy resolver that puts the cap into each drive's policy.

The formula and its derivation are in ``policy.py``. The fully allocated figure depends only
on the capacity and the cluster size, so it is measured when a drive with a new pair is seen
(and again after a resize: a new pair). The bitmaps' share is recomputed from the drive's
bitmaps at every decision, so a bitmap added or removed moves the cap at the next look.
Where a figure is missing (no measure given, the backend does not report the cluster size,
``qemu-img`` failed), the cap stays ``capacity x cap_factor``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable

from autoextend.monitor import policy
from autoextend.monitor.protocols import DriveInfo
from autoextend.monitor.vm import PolicyResolver, log
from autoextend.volumes import VolumeRef

#: (capacity, cluster size) -> ``qemu-img measure``'s fully-allocated bytes, or None.
FullAllocation = Callable[[int, int], Awaitable[int | None]]


class CapBook:
    """The measured fully allocated sizes, by (capacity, cluster size)."""

    def __init__(self, measure: FullAllocation | None = None) -> None:
        self._measure = measure
        self._full: dict[tuple[int, int], int] = {}
        self._failed: set[tuple[int, int]] = set()

    def full(self, capacity: int, cluster: int) -> int | None:
        return self._full.get((capacity, cluster))

    async def ensure(self, infos: Iterable[DriveInfo]) -> None:
        """Measure the pairs not measured yet (one ``qemu-img`` run each; a failure is
        not retried and leaves the factor cap, with one warning)."""
        if self._measure is None:
            return
        for info in infos:
            key = (info.capacity, info.cluster_size)
            if info.capacity <= 0 or info.cluster_size <= 0:
                continue
            if key in self._full or key in self._failed:
                continue
            size = await self._measure(*key)
            if size is None:
                self._failed.add(key)
                log.warning("qemu-img measure gave no figure; the cap stays capacity x "
                            "cap_factor", vm=info.vm, drive=info.drive,
                            capacity=info.capacity, cluster_size=info.cluster_size)
            else:
                self._full[key] = size


def cap_of(info: DriveInfo, pol: policy.DrivePolicy, book: CapBook) -> int:
    """The drive's measured cap, or 0 when its fully allocated size is not known."""
    full = book.full(info.capacity, info.cluster_size)
    if full is None:
        return 0
    bitmaps = policy.bitmap_bytes(info.capacity, info.cluster_size, info.bitmaps)
    return policy.measured_cap(full, bitmaps, info.cluster_size, pol.extent)


class MeasuredCaps:
    """A policy resolver: the inner resolver's policy with the measured cap in it."""

    def __init__(self, inner: PolicyResolver, book: CapBook) -> None:
        self.inner = inner
        self.book = book

    @property
    def sample_after_extend(self) -> bool:
        return self.inner.sample_after_extend

    def __call__(self, info: DriveInfo, volume: VolumeRef) -> policy.DrivePolicy:
        pol = self.inner(info, volume)
        measured = cap_of(info, pol, self.book)
        return dataclasses.replace(pol, cap_bytes=measured) if measured else pol
