"""Snapshot merges through libvirt, the pure parts: the backing chain from the live XML, which
images a commit merges (``libvirt_backend/merges.py``), the commit base's measure
(``jobs.CommitNeeds``) and prepare-merge's rule and errors over fakes
(``autoextend/prepare_merge.py``). The real merges are ``test_merge_libvirt.py`` (slow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend import control
from autoextend.errors import AutoextendError
from autoextend.lab.singlehost import host_settings
from autoextend.libvirt_backend import merges
from autoextend.libvirt_backend.jobs import CommitNeeds
from autoextend.libvirt_backend.merges import ChainImage, MergeChoiceError, MergePair
from autoextend.monitor import jobpolicy
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.protocols import DriveInfo, ExtendOutcome, OutcomeKind, RefreshGate
from autoextend.monitor.vm import FixedPolicy
from autoextend.prepare_merge import MergeNotPrepared, merge_request, prepare_merge
from autoextend.qemuimg import Measure
from autoextend.service import Service
from autoextend.volumes import VolumeRef
from tests.cli.clirun import autoextend

MiB = 1 << 20

XML = """<domain type='qemu'><name>vm1</name><devices>
<disk type='block' device='disk'>
  <driver name='qemu' type='qcow2'/>
  <source dev='/dev/loop3' index='1'/>
  <backingStore type='block' index='2'><format type='qcow2'/><source dev='/dev/loop2'/>
    <backingStore type='block' index='3'><format type='qcow2'/><source dev='/dev/loop1'/>
      <backingStore type='file' index='4'><format type='raw'/><source file='/img/raw'/>
        <backingStore/></backingStore>
    </backingStore>
  </backingStore>
  <target dev='vda' bus='virtio'/>
</disk>
<disk type='block' device='disk'>
  <driver name='qemu' type='qcow2'/><source dev='/dev/loop6' index='5'/>
  <backingStore type='block' index='6'><format type='qcow2'/><source dev='/dev/loop7'/>
    <backingStore/></backingStore>
  <mirror type='block' job='active-commit'><source dev='/dev/loop7' index='6'/></mirror>
  <target dev='vdb' bus='virtio'/>
</disk>
<disk type='block' device='disk'>
  <driver name='qemu' type='qcow2'/><source dev='/dev/loop8' index='7'/><readonly/>
  <target dev='vdc' bus='virtio'/>
</disk>
</devices></domain>"""


def image(index: int, depth: int, *, block: bool = True, qcow2: bool = True) -> ChainImage:
    return ChainImage(index, f"/dev/loop{index}", depth, block, qcow2)


def test_chains_from_the_live_xml() -> None:
    chains = merges.parse_chains(XML)
    assert set(chains) == {"vda"}  # vdb runs a job with a <mirror>, vdc is read-only
    assert chains["vda"] == [
        ChainImage(1, "/dev/loop3", 0, True, True), ChainImage(2, "/dev/loop2", 1, True, True),
        ChainImage(3, "/dev/loop1", 2, True, True), ChainImage(4, "/img/raw", 3, False, False)]
    assert merges.may_merge(chains["vda"])
    assert merges.parse_chains("<not xml") == {}
    assert merges.parse_chains("<domain><devices><disk><target dev='vda'/></disk>"
                               "</devices></domain>") == {"vda": []}


def test_prepare_merge_choices() -> None:
    chain = merges.parse_chains(XML)["vda"]
    pair = merges.choose("vda", chain, 2, None)  # the default base: right below the top
    assert (pair.top_name, pair.base_name, pair.active) == ("vda[2]", "vda[3]", False)
    assert merges.choose("vda", chain, None, 3).top_name == "vda[1]"  # an active commit
    assert merges.choose("vda", chain, None, 3).active
    for top, base, words in ((9, None, "vda[9]: no such image"),
                             (1, 9, "vda[9]: no such image"),
                             (3, 2, "vda[2] is not below vda[3]"),
                             (3, None, "vda[4] is not a qcow2 image on a block device"),
                             (4, None, "vda[4] has no backing image")):
        with pytest.raises(MergeChoiceError, match=words.replace("[", r"\[").replace("]", r"\]")):
            merges.choose("vda", chain, top, base)
    with pytest.raises(MergeChoiceError, match="no backing chain"):
        merges.choose("vda", [], None, None)


def test_drive_names() -> None:
    assert merges.parse_drive("vda") == ("vda", None)
    assert merges.parse_drive("vda[3]") == ("vda", 3)
    for bad in ("", "vda[x]", "../vda", "v" * 65, "vda[1"):
        assert merges.parse_drive(bad) is None


def test_which_images_a_running_commit_merges() -> None:
    three = [image(1, 0), image(2, 1), image(3, 2)]
    pair = merges.commit_pair("vda", three, None)
    assert pair is not None and (pair.top.index, pair.base.index) == (2, 3)
    four = [*three, image(4, 3)]
    assert merges.commit_pair("vda", four, None) is None  # unknown: nothing is guessed
    told = merges.commit_pair("vda", four, (2, 4))
    assert told is not None and (told.top.index, told.base.index) == (2, 4)
    assert merges.commit_pair("vda", four, (1, 4)) is None  # the active image: a <mirror>
    assert merges.commit_pair("vda", four, (4, 2)) is None  # base above the top
    assert merges.commit_pair("vda", four, (2, 9)) is None  # gone from the chain


@given(st.lists(st.integers(1, 50), min_size=0, max_size=8, unique=True),
       st.none() | st.tuples(st.integers(0, 60), st.integers(0, 60)))
def test_a_commit_pair_is_always_a_backing_top_above_its_base(
        indexes: list[int], intent: tuple[int, int] | None) -> None:
    chain = [image(index, depth) for depth, index in enumerate(indexes)]
    pair = merges.commit_pair("vda", chain, intent)
    if pair is None:
        assert len(chain) != 3 or intent is not None
        return
    assert pair.top in chain and pair.base in chain
    assert 0 < pair.top.depth < pair.base.depth


def test_intents_are_kept_per_disk_and_bounded() -> None:
    intents = merges.MergeIntents()
    pair = MergePair("vda", image(2, 1), image(3, 2))
    intents.record("vm1", pair)
    assert intents.get("vm1", "vda") == (2, 3) and intents.get("vm1", "vdb") is None
    for n in range(merges.MAX_INTENTS + 5):
        intents.record(f"vm{n + 2}", pair)
    assert intents.get("vm1", "vda") is None  # the oldest went first
    intents.forget("vm9")
    assert intents.get("vm9", "vda") is None and intents.get("vm10", "vda") == (2, 3)


def base_info(physical: int, **kw: object) -> DriveInfo:
    values: dict[str, object] = {"vm": "vm1", "drive": "vda[3]", "node": "vda[3]",
                                 "path": "/dev/loop1", "capacity": 1024 * MiB,
                                 "allocation": 0, "physical": physical, "job": "commit",
                                 "job_id": "vda"}
    values.update(kw)
    return DriveInfo(**values)  # type: ignore[arg-type]


async def test_commit_needs_are_measured_once_per_job() -> None:
    measured: list[str] = []

    async def measure(path: str) -> int | None:
        measured.append(path)
        return 40 * MiB

    needs = CommitNeeds(measure)
    base = base_info(16 * MiB)
    for _ in range(2):
        [got] = await needs.add("vm1", [base], {"vda[3]": "/dev/loop2"})
        assert got.job_need == 40 * MiB
    assert measured == ["/dev/loop2"]
    await needs.add("vm1", [], {})  # the job ended
    await needs.add("vm1", [base], {"vda[3]": "/dev/loop2"})
    assert measured == ["/dev/loop2"] * 2
    [plain] = await needs.add("vm1", [base_info(16 * MiB, job="mirror")], {})
    assert plain.job_need == 0


@dataclass
class Chains:
    """prepare-merge's view of the hypervisor, in memory."""

    info: DriveInfo
    volume: VolumeRef | None = VolumeRef("vg0", "base")
    bound: int = 0

    async def merge_base(self, vm: str, drive: str,
                         base: int | None) -> tuple[MergePair, DriveInfo]:
        if vm != "vm1":
            raise MergeChoiceError(f"VM {vm} has no writable disk vda")
        return MergePair("vda", image(2, 1), image(3, 2), self.bound), self.info

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None:
        return self.volume


@dataclass
class Extender:
    outcome: OutcomeKind = OutcomeKind.OK
    calls: list[tuple[VolumeRef, int]] = field(default_factory=list)

    async def extend(self, volume: VolumeRef, size: int, *, refresh: bool = True,
                     may_refresh: RefreshGate | None = None) -> ExtendOutcome:
        self.calls.append((volume, size))
        if self.outcome is OutcomeKind.OK:
            return ExtendOutcome(OutcomeKind.OK, size)
        return ExtendOutcome(self.outcome, 0, "vg full")


POLICY = FixedPolicy(PolicySettings(chunk_mib=8, utilization_percent=50, extent_mib=4))


async def measured(path: str) -> int | None:
    return 40 * MiB if path == "/dev/loop2" else None


async def test_prepare_merge_grows_a_short_base_to_the_monitors_rule() -> None:
    chains, extender = Chains(base_info(16 * MiB)), Extender()
    done = await prepare_merge(chains, extender, POLICY, measured, ("vm1", "vda[2]", None))
    want = jobpolicy.need_size(base_info(16 * MiB, job_need=40 * MiB),
                               POLICY(chains.info, VolumeRef("vg0", "base")))
    assert want >= 40 * MiB and extender.calls == [(VolumeRef("vg0", "base"), want)]
    assert (done.before, done.size, done.need, done.extended) == (16 * MiB, want, 40 * MiB,
                                                                  True)
    assert done.as_dict()["volume"] == "vg0/base"


async def test_prepare_merge_leaves_a_base_with_room_and_a_dry_run_alone() -> None:
    extender = Extender()
    roomy = await prepare_merge(Chains(base_info(512 * MiB)), extender, POLICY, measured,
                                ("vm1", "vda[2]", None))
    dry = await prepare_merge(Chains(base_info(16 * MiB)), extender, POLICY, measured,
                              ("vm1", "vda[2]", None), dry_run=True)
    assert extender.calls == [] and not roomy.extended and not dry.extended
    assert dry.dry_run and dry.target > dry.size


async def test_prepare_merge_errors_name_the_cause() -> None:
    info = base_info(16 * MiB)
    cases: list[tuple[Chains, Extender, Measure, str]] = [
        (Chains(info, volume=None), Extender(), measured, "not a volume of this pool"),
        (Chains(info), Extender(), unmeasurable, "qemu-img measure of vda[2]"),
        (Chains(info), Extender(OutcomeKind.FAILED), measured, "failed: vg full"),
    ]
    for chains, extender, measure, words in cases:
        with pytest.raises(MergeNotPrepared, match=words.replace("[", r"\[").replace("]", r"\]")):
            await prepare_merge(chains, extender, POLICY, measure, ("vm1", "vda[2]", None))
    with pytest.raises(MergeChoiceError, match="VM nope"):
        await prepare_merge(Chains(info), Extender(), POLICY, measured, ("nope", "vda", None))


async def unmeasurable(path: str) -> int | None:
    return None


def test_merge_requests_are_checked() -> None:
    assert merge_request({"vm": "vm1", "drive": "vda[2]"}) == ("vm1", "vda[2]", None)
    assert merge_request({"vm": "vm1", "drive": "vda", "base": 3}) == ("vm1", "vda", 3)
    for bad, words in (({"drive": "vda"}, "\"vm\""), ({"vm": "vm1"}, "\"drive\""),
                       ({"vm": "vm1", "drive": "vda", "base": True}, "\"base\""),
                       ({"vm": "vm1", "drive": "vda", "base": -1}, "\"base\""),
                       ({"vm": "x" * 300, "drive": "vda"}, "\"vm\"")):
        with pytest.raises(ValueError, match=words):
            merge_request(bad)


async def test_the_service_refuses_bad_merge_requests_over_its_socket(tmp_path: Path) -> None:
    """A QMP service has no chains to merge by name; a bad request is one clear line."""
    settings = host_settings(tmp_path)
    service = Service(settings)
    sock = settings.service.control_socket
    async with anyio.create_task_group() as tg:
        await tg.start(service.control.serve)
        with pytest.raises(AutoextendError, match="needs the libvirt hypervisor"):
            await control.call(sock, "merge_prepare", vm="vm1", drive="vda[2]")
        with pytest.raises(AutoextendError, match="\"drive\" must be a drive name"):
            await control.call(sock, "merge_prepare", vm="vm1", drive=["vda"])
        tg.cancel_scope.cancel()


def test_prepare_merge_cli_errors_are_one_line(tmp_path: Path) -> None:
    down = autoextend("volume", "prepare-merge", "--socket", str(tmp_path / "none.sock"),
                      "vm1", "vda[2]")
    assert down.code == 1
    assert down.error.startswith("autoextend: error: autoextend service is not running")
    assert autoextend("volume", "prepare-merge", "vm1").code == 2  # DRIVE missing
    bad = autoextend("volume", "prepare-merge", "vm1", "vda", "--base", "x")
    assert bad.code == 2 and "--base" in bad.error


STATS = {
    "block.count": 4,
    "block.0.name": "vda", "block.0.backingIndex": 1, "block.0.physical": 64 * MiB,
    "block.1.name": "vda", "block.1.backingIndex": 2, "block.1.physical": 48 * MiB,
    "block.2.name": "vda", "block.2.backingIndex": 3, "block.2.physical": 16 * MiB,
    "block.3.name": "vdb", "block.3.backingIndex": 4, "block.3.physical": 1024 * MiB,
}


def test_the_bound_sums_the_merged_images_devices() -> None:
    chain = merges.parse_chains(XML)["vda"]
    pair = merges.with_bound(merges.choose("vda", chain, 2, None), chain, STATS)
    assert pair.bound == 64 * MiB  # vda[2] and vda[3]; not the active image, not vdb
    active = merges.with_bound(merges.choose("vda", chain, None, 3), chain, STATS)
    assert active.bound == 128 * MiB
    missing = {k: v for k, v in STATS.items() if not k.startswith("block.2.")}
    assert merges.with_bound(merges.choose("vda", chain, 2, None), chain, missing).bound == 0


async def test_an_unmeasurable_top_falls_back_to_the_bound() -> None:
    needs = CommitNeeds(unmeasurable)
    [got] = await needs.add("vm1", [base_info(16 * MiB)], {"vda[3]": "/dev/loop2"},
                            {"vda[3]": 64 * MiB})
    assert got.job_need == 64 * MiB
    bounded = Chains(base_info(16 * MiB), bound=64 * MiB)
    done = await prepare_merge(bounded, Extender(), POLICY, unmeasurable,
                               ("vm1", "vda[2]", None))
    assert done.estimated and done.need == 64 * MiB and done.size >= 64 * MiB
