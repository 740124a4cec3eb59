"""The host's in-use publisher (``spm/inusepub.py``) and the holders scan it uses
(``capacity/reduce.py: held_volumes``)."""

from __future__ import annotations

import os
from pathlib import Path

from autoextend.capacity.reduce import held_volumes
from autoextend.clock import ManualClock
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm import inuse
from autoextend.spm.inusepub import CLAIM_TTL_S, InUsePublisher
from autoextend.volumes import VolumeRef

from .fakes import FAST, Watched, layout_for


async def test_publishes_continues_its_seq_and_survives_failures() -> None:
    layout = layout_for(FAST)
    storage = Watched(MemoryStorage(layout.end, 512))
    names = ["vg0/a", "vg0/b"]

    async def source() -> list[str]:
        if names == ["boom"]:
            raise RuntimeError("monitor not ready")
        return list(names)

    pub = InUsePublisher(storage, layout, 3, source, lambda: 77, ManualClock())
    await pub.start()
    first = await pub.publish_once()
    assert first is not None and first.seq == 1 and first.lists("vg0/b")
    raw = await storage.read(layout.inuse_offset(3), inuse.RECORD_BYTES)
    assert inuse.decode(raw, 3) == first and first.generation == 77
    storage.fail_writes = True
    assert await pub.publish_once() is None and pub.failures == 1
    storage.fail_writes = False
    names[:] = ["boom"]
    assert await pub.publish_once() is None and pub.failures == 2
    names[:] = []
    third = await pub.publish_once()
    assert third is not None and third.seq > 2 and not third.lists("vg0/a")
    # A restart continues from the seq on disk: the SPM never sees it go back.
    again = InUsePublisher(storage, layout, 3, source, lambda: 78, ManualClock())
    await again.start()
    nxt = await again.publish_once()
    assert nxt is not None and nxt.seq == third.seq + 1
    # Its neighbours' records are untouched (one writer per record).
    assert inuse.decode(await storage.read(layout.inuse_offset(2), 4096), 2) is None
    assert inuse.decode(await storage.read(layout.inuse_offset(4), 4096), 4) is None


async def test_an_unreadable_own_record_restarts_from_a_high_seq() -> None:
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)
    await storage.write(layout.inuse_offset(3), b"\x01" * 512)

    async def source() -> list[str]:
        return []

    pub = InUsePublisher(storage, layout, 3, source, lambda: 1, ManualClock(),
                         wall_us=lambda: 10**15)
    await pub.start()
    rec = await pub.publish_once()
    assert rec is not None and rec.seq == 10**15 + 1


class Backend:
    """lookup/device_path of a host whose device for vg0/v is ``dev``."""

    def __init__(self, dev: str) -> None:
        self.dev = dev

    def lookup(self, path: str) -> VolumeRef | None:
        return VolumeRef("vg0", "v") if path in (self.dev, "/dev/mapper/vg0-v") else None

    def device_path(self, volume: VolumeRef) -> str:
        return self.dev


def test_held_volumes_finds_this_hosts_devices_only(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.write_text("")
    other.write_text("")
    for pid, target in (("100", mine), ("200", other), ("300", Path("/nonexistent"))):
        (proc / pid / "fd").mkdir(parents=True)
        os.symlink(target, proc / pid / "fd" / "3")
    (proc / "self").mkdir()
    found = held_volumes(Backend(str(mine)), str(proc))  # type: ignore[arg-type]
    assert found == {VolumeRef("vg0", "v")}
    assert held_volumes(Backend(str(tmp_path / "x")), str(proc)) == set()  # type: ignore[arg-type]


async def test_a_claim_is_listed_until_the_source_lists_it_or_it_lapses() -> None:
    """``claim`` (the host's half of the intent protocol): listed at once, before the
    intent record is read; handed to the source when the monitor sees the guest; a claim
    the source never lists lapses after CLAIM_TTL_S; a failed write takes it back."""
    layout = layout_for(FAST)
    storage = Watched(MemoryStorage(layout.end, 512))
    listed: list[str] = []

    async def source() -> list[str]:
        return list(listed)

    clock = ManualClock()
    pub = InUsePublisher(storage, layout, 3, source, lambda: 77, clock)
    await pub.start()
    assert await pub.claim("vg0/a") is None and await pub.claim("vg0/b") is None
    raw = await storage.read(layout.inuse_offset(3), inuse.RECORD_BYTES)
    rec = inuse.decode(raw, 3)
    assert rec is not None and rec.lists("vg0/a") and rec.lists("vg0/b")
    listed.append("vg0/a")  # the monitor saw the guest on vg0/a
    await pub.publish_once()
    assert set(pub.claims) == {"vg0/b"}
    clock.advance(CLAIM_TTL_S)
    last = await pub.publish_once()
    assert last is not None and last.lists("vg0/a") and not last.lists("vg0/b")
    assert not pub.claims
    storage.fail_writes = True
    refused = await pub.claim("vg0/c")
    assert refused is not None and "could not publish" in refused and not pub.claims
