"""VGs are extended in parallel on the SPM, each VG one lvm2 command at a time.

Real lvm2 (activation off) on loop-device PVs: four VGs, the SPM's executor and the default
runner (a persistent ``lvm`` shell per VG). Each session's runner is instrumented (a
wrapper), so the test sees what lvm2 runs at once: never two commands of one VG, and
commands of different VGs overlapping. No timing is
asserted (the extends/s figure is bench/lvm_bench.py's)."""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence

import anyio
import pytest

from autoextend.clock import ManualClock
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import CommandResult, LvmRunner, runner_for
from autoextend.lvm.shell import LvmShellRunner, PerVgShellRunner
from autoextend.lvm.writer import LvmWriter
from autoextend.spm.execute import Executor
from autoextend.spm.wire import Request, Status
from autoextend.volumes import LocalAuthority, VolumeRef

from .support import EXTENT, MiB, make_pv_files, release_under, unique_name


def _vg_of(argv: Sequence[str]) -> str:
    """The VG a command of this test is about: its last argument, ``vg/lv`` or ``vg``, or
    ``vg_name=vg`` (the writer's segment report)."""
    last = argv[-1]
    return last.split("/", 1)[0] if "/" in last else last.rsplit("=", 1)[-1]


class InFlight:
    """What lvm2 is running: per VG and in all, now and at most."""

    def __init__(self) -> None:
        self.now: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.total = 0
        self.most_total = 0
        self.commands: Counter[str] = Counter()


class Watched:
    """One session's runner, its commands counted in ``flight`` from when they are handed
    to the session until answered. A session serves one VG alone (asserted below), so a
    count of at most 1 per VG here means nothing was even queued behind a command of that
    VG: lvm2 ran at most one command per VG at a time."""

    def __init__(self, flight: InFlight) -> None:
        self.inner = LvmShellRunner(timeout_s=60)
        self.flight = flight

    async def run(self, args: Sequence[str]) -> CommandResult:
        vg, flight = _vg_of(args), self.flight
        flight.now[vg] += 1
        flight.total += 1
        flight.most[vg] = max(flight.most[vg], flight.now[vg])
        flight.most_total = max(flight.most_total, flight.total)
        flight.commands[args[0]] += 1
        try:
            return await self.inner.run(args)
        finally:
            flight.now[vg] -= 1
            flight.total -= 1

    def for_vg(self, vg: str) -> LvmRunner:
        return self

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.slow
async def test_four_vgs_extend_in_parallel_one_command_per_vg() -> None:
    workdir = tempfile.mkdtemp(prefix="autoextend-parvg-", dir="/var/tmp")
    flight = InFlight()
    runner = PerVgShellRunner(make_session=lambda: Watched(flight))
    try:
        _, devices = await make_pv_files(workdir, 4, 128 * MiB)
        config = LvmCommandConfig(tuple(devices))
        writer = LvmWriter(runner, config, LocalAuthority())
        vgs = [unique_name("aepv") for _ in devices]
        for vg, device in zip(vgs, devices, strict=True):
            await writer.pvcreate([device])
            await writer.vgcreate(vg, [device], extent_size=EXTENT)
            await writer.create_lv(VolumeRef(vg, "lv0"), EXTENT)
            await writer.create_lv(VolumeRef(vg, "lv1"), EXTENT)
        backend = LvmVolumeBackend(runner, LvmReader(runner, config), writer, tuple(vgs))
        executor = Executor(backend, LocalAuthority(), ManualClock(), hot_window_s=0.0,
                            max_concurrent=10)
        flight.most.clear()
        flight.most_total = 0
        flight.commands.clear()
        rounds = 6
        verdicts: list[tuple[str, str, int, Status, int]] = []

        async def extend(vg: str, lv: str, request_id: int) -> None:
            for step in range(rounds):
                size = (step + 2) * EXTENT
                verdict = await executor.execute(
                    1, 1, Request(request_id * 100 + step, vg, lv, size))
                assert verdict is not None
                verdicts.append((vg, lv, size, verdict.status, verdict.size))

        async with anyio.create_task_group() as tg:
            for index, vg in enumerate(vgs):
                for lv in ("lv0", "lv1"):  # two LVs per VG: the VG's own queue is used too
                    tg.start_soon(extend, vg, lv, index * 2 + int(lv[-1]))

        assert len(verdicts) == len(vgs) * 2 * rounds
        assert all(status == Status.OK and got == size
                   for _, _, size, status, got in verdicts), verdicts
        assert flight.commands["lvextend"] == len(verdicts)
        # Never two lvm2 commands of one VG at once; VGs did overlap (each VG has its own
        # session: a single session for the host would keep most_total at 1).
        assert set(flight.most) == set(vgs)
        assert max(flight.most.values()) == 1, flight.most
        assert flight.most_total >= 2
        for vg in vgs:  # what lvm2 has now: every LV at its last size
            for lv in ("lv0", "lv1"):
                assert (await backend.reader.lv(VolumeRef(vg, lv))).size == (rounds + 1) * EXTENT
        # Each VG went to its own session, commands of no one VG to another.
        sessions = {id(runner_for(runner, vg)) for vg in vgs}
        assert len(sessions) == len(vgs) and id(runner) not in sessions
        for vg in vgs:
            await writer.vgremove(vg)
    finally:
        await runner.aclose()
        await release_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)


async def test_sessions_are_capped_and_shared_in_turn() -> None:
    made: list[LvmShellRunner] = []

    def make() -> LvmShellRunner:
        made.append(LvmShellRunner())
        return made[-1]

    runner = PerVgShellRunner(max_sessions=3, make_session=make)
    first = [runner.for_vg(f"vg{index}") for index in range(4)]
    assert len(made) == 3  # one for commands of no one VG, two for VGs
    assert first[0] is not first[1]
    assert first[2] is first[0] and first[3] is first[1]  # past the cap: in turn
    assert runner.for_vg("vg0") is first[0]  # a VG keeps its session
    assert runner_for(runner, None) is runner
    with pytest.raises(ValueError, match="max_sessions"):
        PerVgShellRunner(max_sessions=1)
    await runner.aclose()  # no session was started: nothing to stop
