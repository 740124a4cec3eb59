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

from autoextend.lab.chaos import SoakConfig, soak
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
