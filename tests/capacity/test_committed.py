"""The SPM's committed-space scan and publisher (fake lister and probe, memory storage)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from autoextend.capacity import committed_record as cr
from autoextend.capacity.committed import CommittedPublisher, CommittedScanner, parse_info
from autoextend.capacity.config import CapacitySettings
from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError
from autoextend.sectorfakes import MemoryStorage
from autoextend.volumes import ListedVolume, VgVolumes

MiB = 1 << 20
GiB = 1 << 30


class Lister:
    def __init__(self) -> None:
        self.vgs: dict[str, VgVolumes] = {}

    async def vg_volumes(self, vg: str) -> VgVolumes | None:
        return self.vgs.get(vg)


class Probe:
    def __init__(self, answers: dict[str, int]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, path: str) -> tuple[int | None, str]:
        self.calls.append(path)
        got = self.answers.get(path)
        return (got, "") if got is not None else (None, "cannot open")


class Term:
    def __init__(self) -> None:
        self.valid = True

    def check(self) -> None:
        if not self.valid:
            raise NotSpmError("term over")


def vol(lv: str, tag: int | None = None, ident: object = 1, problem: str = "") -> ListedVolume:
    return ListedVolume(lv, (ident,), tag, problem, f"/dev/gold/{lv}")


async def test_tags_first_then_qemu_img_reused_while_the_volume_is_the_same() -> None:
    lister, clock = Lister(), ManualClock()
    probe = Probe({"/dev/gold/b": 3 * GiB})
    lister.vgs["gold"] = VgVolumes("gold", 10 * GiB, (
        vol("a", 2 * GiB), vol("b"), vol("c"), vol("d", problem="tag 'x' is bad")))
    scanner = CommittedScanner(lister, clock, probe=probe, reuse_s=60)
    [f] = await scanner.scan(["gold", "missing"])
    assert (f.vg, f.size, f.committed, f.volumes, f.unknown) == ("gold", 10 * GiB, 5 * GiB,
                                                                  4, 2)
    assert sorted(probe.calls) == ["/dev/gold/b", "/dev/gold/c", "/dev/gold/d"]
    size, detail = await scanner.volumes("gold") or (0, [])
    assert [(v.lv, v.source) for v in detail] == [("a", "tag"), ("b", "qemu-img"),
                                                   ("c", "unknown"), ("d", "unknown")]
    assert "tag 'x' is bad" in detail[3].why
    assert len(probe.calls) == 3  # the same volumes: no new qemu-img
    lister.vgs["gold"] = VgVolumes("gold", 10 * GiB, (vol("a", 2 * GiB), vol("b", ident=2)))
    await scanner.scan(["gold"])
    assert probe.calls[3:] == ["/dev/gold/b"]  # b changed; c and d are gone
    clock.advance(61)
    await scanner.scan(["gold"])
    assert probe.calls[4:] == ["/dev/gold/b"]  # too old to reuse


async def test_only_the_spm_writes_and_checks_its_term_before() -> None:
    storage = MemoryStorage(8 * MiB, 512)
    clock = ManualClock()
    lister = Lister()
    lister.vgs["gold"] = VgVolumes("gold", 10 * GiB, (vol("a", 40 * GiB),))
    term = Term()
    lease = SimpleNamespace(term=None)
    agent = SimpleNamespace(storage=storage, lease=lease, host_id=4)
    pub = CommittedPublisher(agent, CommittedScanner(lister, clock), CapacitySettings(),
                             ["gold"], 0, clock, wall=lambda: 1000.5)
    assert not await pub.publish_once()  # not the SPM
    offset = cr.record_offset(0, 512)
    assert cr.decode(await storage.read(offset, 512)) is None
    lease.term = term
    assert await pub.publish_once()
    rec = cr.decode(await storage.read(offset, 512))
    assert rec is not None and (rec.host_id, rec.seq, rec.published_ms) == (4, 1, 1000500)
    assert rec.vgs[0].committed == 40 * GiB
    term.valid = False
    with pytest.raises(NotSpmError):
        await pub.publish_once()
    assert pub.writes == 1


async def test_unknown_volumes_are_logged_once() -> None:
    storage = MemoryStorage(8 * MiB, 512)
    clock = ManualClock()
    lister = Lister()
    lister.vgs["gold"] = VgVolumes("gold", 10 * GiB, (vol("a"),))
    agent = SimpleNamespace(storage=storage, lease=SimpleNamespace(term=Term()), host_id=1)
    pub = CommittedPublisher(agent, CommittedScanner(lister, clock, probe=Probe({})),
                             CapacitySettings(), ["gold"], 0, clock)
    with capture_logs() as logs:
        for _ in range(3):
            clock.advance(100)
            await pub.publish_once()
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1 and warned[0]["unknown"] == 1
    assert warned[0]["volumes"] == ["gold/a: cannot open"]  # what to tag, and why


def test_parse_info() -> None:
    assert parse_info('{"virtual-size": 1073741824, "format": "qcow2"}') == 1 << 30
    for bad in ('{"virtual-size": 0}', '{"virtual-size": true}', "[]", '{"format": "raw"}'):
        with pytest.raises(ValueError):
            parse_info(bad)
