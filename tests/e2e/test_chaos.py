"""Issue 31: the chaos soak's short form, in every ``make test``.

Three ``autoextend run`` hosts in mailbox mode and three TCG guests writing the verifiable
pattern, under 75 s of seeded faults from every kind (``autoextend/lab/chaos_plan.py``):
host kills, SPM freezes and kills, step-downs, config reloads (some broken), a full VG,
metadata I/O errors, EIO on a guest's own volume (chaos1 runs on a fault volume) and live
migrations, two lanes at once. Every invariant of ``autoextend/lab/chaos.py`` must hold.

The seed is new on every run (``AUTOEXTEND_CHAOS_SEED`` fixes it) and printed first, with the
command that replays the run at full scale; a failure prints the whole one-page report.
The mutation check (``bench/chaos.py --mutant``) is recorded under ``bench/results/``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from autoextend.lab.chaos import Soak, SoakConfig, soak
from autoextend.lab.guest import last_progress
from autoextend.lab.multihost import pool
from autoextend.lab.waiting import until
from bench.chaos import render

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1200)
async def test_short_chaos_soak_loses_nothing(lab_tmp_path: Path) -> None:
    seed = int(os.environ.get("AUTOEXTEND_CHAOS_SEED") or random.SystemRandom().randrange(1 << 31))
    cfg = SoakConfig(seed=seed, duration_s=75.0, hosts=3, guests=3, directory=lab_tmp_path)
    print(f"chaos soak seed {seed}; replay: {cfg.replay()}")
    report = await soak(cfg)
    page = render(report)
    print(page)
    assert report.faults, page
    assert len(report.guests) == 3 and all(g["verified"] for g in report.guests.values()), page
    assert report.violations == [], page


@pytest.mark.timeout(900)
async def test_eio_on_a_guests_volume_pauses_it_and_autoextend_resumes_it(
        lab_tmp_path: Path) -> None:
    """Only the ``guest-eio`` fault, at the smallest scale: chaos1's own volume fails with
    EIO on every host's view for each hold; QEMU pauses it (``werror=stop``), the host's
    monitor resumes it once healed (``[resume] policy = auto``), and its data verifies."""
    cfg = SoakConfig(seed=11, duration_s=30.0, hosts=2, guests=2, kinds=("guest-eio",),
                     directory=lab_tmp_path)
    report = await soak(cfg)
    page = render(report)
    print(page)
    assert report.violations == [], page
    applied = [f for f in report.faults if f.target.startswith("chaos1")]
    assert applied and all("running" in f.detail for f in applied), page
    eio = [p for p in report.pauses if p["vm"] == "chaos1" and p["reason"] == "io-error"]
    assert eio and all(p["duration_s"] is not None for p in eio), page
    assert all(g["verified"] for g in report.guests.values()), page


@pytest.mark.timeout(900)
async def test_a_crashed_guests_writes_are_read_back_by_a_second_boot(
        lab_tmp_path: Path) -> None:
    """A guest whose kernel crashed (two in the one-hour soaks, in guest RAM after TCG
    migrations) never finishes its writes; the soak stops its QEMU and boots a second guest
    on the same view that reads back what the first reported written. Here the "crash" is
    named by the test after 16 MiB (a kernel cannot be crashed on demand): the read-back
    verifies and the report keeps the crash apart from the invariants. The negative control:
    a later QEMU's log that claims more than was written fails the read-back."""
    cfg = SoakConfig(seed=5, duration_s=600.0, hosts=1, guests=2, kinds=("reload",),
                     directory=lab_tmp_path)
    async with pool(1, chunk_mib=cfg.soak_chunk_mib, directory=lab_tmp_path) as p:
        run = Soak(cfg, p, {})
        await p.wait_for_spm()
        await run.start_guests()
        good, bad = run.guests["chaos0"], run.guests["chaos1"]
        for g in (good, bad):
            await g.guest.vm.wait_for_start(timeout=300)
        await until(lambda: all((last_progress(g.guest.vm.serial_text()) or 0) >= 16
                                for g in (good, bad)), timeout=300, what="16 MiB written")
        assert good.job.mib > 32  # still writing when its "crash" is named

        await run.read_back(good, "[ 1.0] BUG: named by the test")
        crash = run.report.guest_crashes["chaos0"]
        assert crash["written_mib"] >= 16 and crash["verified"] is True, crash
        assert good.result is not None and good.result.verified
        assert good.guest.vm.name == "chaos0-readback"

        # chaos1's "next QEMU" claims 64 MiB more than it wrote: the read-back must fail.
        later = lab_tmp_path / "vms" / "chaos1-9-1"
        later.mkdir()
        claimed = bad.job.mib + 64
        (later / "serial.log").write_text(f"AUTOEXTEND-GUEST-PROGRESS written_mib={claimed}\n")
        await run.read_back(bad, "[ 1.0] BUG: named by the test")
        assert run.report.guest_crashes["chaos1"]["written_mib"] == claimed
        assert run.report.guest_crashes["chaos1"]["verified"] is False
        await run.check()
    assert any(v.startswith("chaos1: data does not verify") for v in run.report.violations), \
        run.report.violations
    assert not any(v.startswith("chaos0") for v in run.report.violations), \
        run.report.violations
    page = render(run.report)
    assert "Guest kernel crashes" in page and "chaos0" in page
