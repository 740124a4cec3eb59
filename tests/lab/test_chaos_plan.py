"""The chaos soak's pure parts (``autoextend/lab/chaos_plan.py``): the seeded schedule and
the invariants it checks over the hosts' logs."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from autoextend.lab import chaos_plan as plan
from autoextend.lab.chaos import (
    FaultRecord,
    SoakConfig,
    SoakReport,
    first_kernel_crash,
    written_by_progress,
)
from bench import chaos as bench_chaos

MiB = 1 << 20


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def ev(t: float, event: str, **fields: Any) -> dict[str, Any]:
    return {"timestamp": stamp(t), "event": event, **fields}


@given(st.integers(0, 2**31), st.floats(10, 3600))
@example(902, 2648.0)  # a gap counted from unrounded times came out 1 ms short
def test_the_schedule_is_seeded_and_fits(seed: int, duration: float) -> None:
    faults = plan.plan_faults(seed, duration)
    assert faults == plan.plan_faults(seed, duration)
    timing = plan.Timing()
    for lane in (0, 1):
        mine = [f for f in faults if f.lane == lane]
        for a, b in zip(mine, mine[1:], strict=False):
            assert b.at_s >= a.at_s + a.hold_s + timing.gap[0] - 1e-3  # never overlap
        for f in mine:
            assert f.kind in (plan.HOST_FAULTS if lane == 0 else plan.POOL_FAULTS)
            low, high = timing.hold_of(f.kind)
            assert low - 1e-3 <= f.hold_s <= high + 1e-3
            assert f.at_s + f.hold_s <= duration + 1e-3


def test_a_long_schedule_has_every_kind() -> None:
    kinds = {f.kind for f in plan.plan_faults(7, 3600)}
    assert kinds == set(plan.FAULT_KINDS)


def test_kinds_limit_the_schedule() -> None:
    faults = plan.plan_faults(3, 600, kinds=("stop-spm",))
    assert faults and {f.kind for f in faults} == {"stop-spm"}


def test_one_writer_per_term_is_clean() -> None:
    events = [(1, ev(10, "SPM term started", lver=1)),
              (1, ev(11, "volume extended", lver=1, volume="demo/a")),
              (2, ev(20, "SPM term started", lver=2)),
              (2, ev(21, "volume extended", lver=2, volume="demo/a"))]
    assert plan.spm_writer_violations(events) == []


def test_a_stale_spm_write_is_caught() -> None:
    """The old SPM (term 1) writes after host 2 started term 2: what a missing term check
    before a write does after a freeze."""
    events = [(1, ev(10, "SPM term started", lver=1)),
              (2, ev(20, "SPM term started", lver=2)),
              (1, ev(20.5, "volume extended", lver=1, volume="demo/a"))]
    found = plan.spm_writer_violations(events)
    assert len(found) == 1 and "host 1 changed demo/a under term 1" in found[0]


def test_two_owners_of_one_term_are_caught() -> None:
    events = [(1, ev(10, "SPM term started", lver=3)), (2, ev(11, "SPM term started", lver=3)),
              (2, ev(12, "volume extended", lver=3, volume="demo/b"))]
    found = plan.spm_writer_violations(events)
    assert any("started by hosts 1 and 2" in v for v in found)
    assert any("host 2 changed demo/b under term 3 of host 1" in v for v in found)


def test_tracebacks_are_found() -> None:
    text = '{"event": "ok"}\n{"event": "boom", "exception": "Traceback ..."}\nplain\n'
    assert len(plan.tracebacks(2, text)) == 1
    assert plan.tracebacks(2, "Traceback (most recent call last):\n")
    assert plan.tracebacks(1, '{"event": "fine"}\n') == []


@given(st.integers(0, 4096), st.integers(0, 4096), st.integers(1, 64))
def test_growth_bound(start_mib: int, end_mib: int, chunk_mib: int) -> None:
    start, end, chunk = start_mib * MiB, end_mib * MiB, chunk_mib * MiB
    need = max(start, end)
    bound = -(-(need + 2 * chunk) // (4 * MiB)) * (4 * MiB)
    assert plan.growth_violation("v", bound, start, end, chunk, 4 * MiB) is None
    assert plan.growth_violation("v", bound + 4 * MiB, start, end, chunk, 4 * MiB)


def test_pauses_pair_up_per_host_and_vm() -> None:
    events = [(1, ev(100, "vm paused", vm="a", reason="enospc")),
              (2, ev(101, "vm paused", vm="b", reason="eio")),
              (1, ev(102.5, "vm resumed", vm="a")),
              (1, ev(103, "vm paused", vm="a", reason="enospc"))]
    found = plan.pauses(events)
    assert [(p.vm, p.host, p.reason) for p in found] == [
        ("a", 1, "enospc"), ("b", 2, "eio"), ("a", 1, "enospc")]
    assert found[0].duration_s == pytest.approx(2.5)
    assert found[1].end is None and found[2].end is None


def test_a_pause_ends_when_the_vm_leaves_the_host() -> None:
    """A migration's source paused (ENOSPC) when the switchover came: its pause ends with
    ``vm gone`` there, not at the VM's next resume on that host minutes later."""
    events = [(1, ev(100, "vm paused", vm="a", reason="io-error")),
              (1, ev(103, "vm gone", vm="a")),
              (2, ev(104, "vm paused", vm="a", reason="enospc")),
              (2, ev(104.5, "vm resumed", vm="a")),
              (1, ev(400, "vm paused", vm="a", reason="migration")),
              (1, ev(401, "vm resumed", vm="a"))]
    found = plan.pauses(events)
    assert [(p.host, p.gone) for p in found] == [(1, True), (2, False), (1, False)]
    assert [round(p.duration_s or -1, 3) for p in found] == [3.0, 0.5, 1.0]


def test_a_pause_ends_when_its_hosts_service_starts_again() -> None:
    """Stop 41's soak: the VM arrived paused on host 1, host 1's service was killed, the VM
    was migrated away meanwhile (no ``vm gone`` there), and the pause ran to the VM's next
    resume on host 1, 23 minutes later. Its host's ``service ready`` ends it; a VM still
    paused there is logged paused again, as a new pause."""
    events = [(1, ev(100, "vm paused", vm="a", reason="other")),
              (1, ev(100.5, "vm paused", vm="b", reason="enospc")),
              (2, ev(101, "vm paused", vm="c", reason="enospc")),
              (1, ev(165, "service ready")),
              (1, ev(166, "vm paused", vm="b", reason="enospc")),
              (1, ev(167, "vm resumed", vm="b")),
              (2, ev(168, "vm resumed", vm="c")),
              (1, ev(1480, "vm runs again (resumed by someone else)", vm="a"))]
    found = plan.pauses(events)
    assert [(p.vm, p.host, p.duration_s, p.restarted) for p in found] == [
        ("a", 1, 65.0, True), ("b", 1, 64.5, True), ("c", 2, 67.0, False),
        ("b", 1, 1.0, False)]


def test_extension_latencies_and_percentiles() -> None:
    events = [(1, ev(1, "extended", duration_s=0.1)), (2, ev(2, "extended", duration_s=0.3)),
              (2, ev(3, "extended"))]
    lat = plan.extension_latencies(events)
    assert lat == {"1": [0.1], "2": [0.3]}
    assert plan.percentile([0.1, 0.3], 0.5) == 0.3
    assert plan.percentile([], 0.5) is None


def test_bench_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in (["--mutant", "no_such_check"], ["--hosts", "1"], ["--duration", "1"],
                ["--max-mib", "10"], ["--kinds", "guest-eio,nope"]):
        with pytest.raises(SystemExit) as exc:
            bench_chaos.parse(bad)
        assert exc.value.code == 2
    args = bench_chaos.parse(["--mutant", "term_check,protect_views"])
    assert args.mutant == ("term_check", "protect_views") and args.seed is not None


@given(st.floats(0.01, 4.0), st.floats(1.0, 4.0), st.floats(10, 86400), st.integers(64, 8192))
def test_the_write_cap_holds(slow: float, spread: float, duration: float, cap: int) -> None:
    """Scaled rates never write more than the cap in the soak's time; a guest writes at
    least two chunks and at most the cap; the chunk is whole extents, at most the
    configured one, and small enough that the fastest guest needs several extensions a
    minute (unless one extent already is that small)."""
    rates = (slow, slow * spread)
    scale = plan.rate_scale(rates, duration, cap)
    assert 0 < scale <= 1
    assert rates[1] * scale * duration <= cap * (1 + 1e-9)
    chunk = plan.soak_chunk_mib(rates[1] * scale, 16, 4)
    assert 4 <= chunk <= 16 and chunk % 4 == 0
    per_minute = rates[1] * scale * 60
    assert chunk == 4 or per_minute / chunk >= plan.EXTENTS_PER_MINUTE
    for rate in rates:
        mib = plan.guest_mib(rate * scale, duration, chunk, cap)
        assert min(cap, 2 * chunk) <= mib <= cap


def test_the_default_soak_and_an_hour_need_several_extensions_a_minute() -> None:
    ten = SoakConfig(seed=1)
    assert ten.soak_chunk_mib == 16 and ten.scale < 1  # 2 MiB/s x 600 s > 1024 MiB
    assert ten.rates_mib_s[1] * ten.scale * 60 / ten.soak_chunk_mib >= 4
    hour = SoakConfig(seed=1, duration_s=3600, guests=6)
    fastest = hour.rates_mib_s[1] * hour.scale
    assert fastest * 3600 <= hour.max_mib + 1
    assert hour.soak_chunk_mib == 4 and fastest * 60 / hour.soak_chunk_mib >= 4
    assert "--max-mib" not in hour.replay()
    assert "--max-mib 512" in SoakConfig(seed=1, max_mib=512).replay()


def test_the_summary_block_counts_what_the_readme_needs() -> None:
    report = SoakReport(config={"seed": 5, "hosts": 3, "guests": 2, "duration_s": 60.0,
                                "chunk_mib": 16, "mutant": ()}, replay="python -m bench.chaos")
    report.faults = [FaultRecord("guest-eio", "chaos1", 1.0, 5.0),
                     FaultRecord("kill-spm", "host 1", 2.0, 9.0),
                     FaultRecord("guest-eio", "chaos1", 20.0, 25.0)]
    report.pauses = [{"vm": "chaos1", "host": 1, "reason": "io-error", "at_s": 1.0,
                      "duration_s": 6.5},
                     {"vm": "chaos0", "host": 2, "reason": "migration", "at_s": 3.0,
                      "duration_s": 99.0},
                     {"vm": "chaos0", "host": 1, "reason": "enospc", "at_s": 4.0,
                      "duration_s": None}]
    report.extensions = {"count": 12, "spm_changes": 11, "p50_s": 0.1, "p99_s": 2.0}
    text = bench_chaos.summary(report)
    assert "faults injected: 3 (2 guest-eio, 1 kill-spm)" in text
    assert "pauses: 3 (1 io-error, 1 migration, 1 enospc)" in text
    assert "worst pause: 6.50 s" in text  # the migration switchover is left out
    assert "extensions: 12 seen by the monitors, 11 made by the SPMs" in text
    assert "invariant violations: 0" in text and "PASSED" in text
    report.violations.append("chaos1: data does not verify")
    assert "invariant violations: 1" in bench_chaos.summary(report)
    assert "FAILED" in bench_chaos.render(report)


def test_a_guests_kernel_crash_is_found_in_any_of_its_qemus(tmp_path: Path) -> None:
    """The soak names a guest's kernel crash in its violation: the crash is often in an
    earlier QEMU's serial log (the guest was migrated on after it), and a guest whose name
    starts like another's (chaos4, chaos40) never reads the other's logs."""
    crash = "[  826.040713] BUG: kernel NULL pointer dereference, address: 0000000000000000"
    logs = {"chaos4": "AUTOEXTEND-GUEST-PROGRESS written_mib=16\n",
            "chaos4-126-1": f"{crash}\n[  826.04] #PF: supervisor instruction fetch\n",
            "chaos4-188-3": "", "chaos40-7-2": "[ 1.0] Kernel panic - not syncing\n"}
    for when, (folder, text) in enumerate(logs.items()):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "serial.log").write_text(text)
        os.utime(tmp_path / folder, (1000 + when, 1000 + when))
    assert first_kernel_crash(tmp_path, "chaos4") == f"{crash} (QEMU chaos4-126-1)"
    assert first_kernel_crash(tmp_path, "chaos40") == \
        "[ 1.0] Kernel panic - not syncing (QEMU chaos40-7-2)"
    assert first_kernel_crash(tmp_path, "chaos1") is None


def test_what_a_crashed_guest_wrote_is_its_last_progress_in_any_of_its_qemus(
        tmp_path: Path) -> None:
    """The read-back of a crashed guest reads what it reported written, whichever of its
    QEMUs (its first boot, each migration's) printed it last; never another guest's nor a
    read-back boot's log, and a half-written last line does not count."""
    logs = {"chaos4": "AUTOEXTEND-GUEST-PROGRESS written_mib=16\n",
            "chaos4-126-1": "AUTOEXTEND-GUEST-PROGRESS written_mib=48\n"
                            "AUTOEXTEND-GUEST-PROGRESS written_mib=6",
            "chaos4-188-3": "[ 2.0] BUG: kernel NULL pointer dereference\n",
            "chaos4-readback": "AUTOEXTEND-GUEST-PROGRESS written_mib=999\n",
            "chaos40": "AUTOEXTEND-GUEST-PROGRESS written_mib=500\n"}
    for when, (folder, text) in enumerate(logs.items()):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "serial.log").write_text(text)
        os.utime(tmp_path / folder, (1000 + when, 1000 + when))
    assert written_by_progress(tmp_path, "chaos4") == 48
    assert written_by_progress(tmp_path, "chaos40") == 500
    assert written_by_progress(tmp_path, "chaos1") == 0


def test_the_report_keeps_a_guest_crash_apart_from_the_invariants() -> None:
    report = SoakReport(config={"seed": 3, "hosts": 3, "guests": 2, "duration_s": 60.0,
                                "chunk_mib": 16, "mutant": ()}, replay="r")
    assert "guest kernel crashes" not in bench_chaos.summary(report)
    report.guest_crashes["chaos4"] = {"crash": "[ 1.0] BUG: x", "written_mib": 48,
                                      "verified": True}
    text = bench_chaos.summary(report)
    assert "PASSED" in text and "invariant violations: 0" in text
    assert "guest kernel crashes: 1 (not storage; what they wrote read back intact by a " \
           "second boot: 1 of 1)" in text
    page = bench_chaos.render(report)
    assert "| chaos4 | [ 1.0] BUG: x | 48 | intact |" in page
    report.guest_crashes["chaos5"] = {"crash": "[ 2.0] BUG: y", "written_mib": 16,
                                      "verified": False}
    assert "| chaos5 | [ 2.0] BUG: y | 16 | DOES NOT VERIFY |" in bench_chaos.render(report)
