"""Pure functions of the guest job and result line: round trips, rejection of bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.lab.errors import GuestResultError
from autoextend.lab.guest import (
    MAX_SEED,
    GuestJob,
    GuestResult,
    Mode,
    Pattern,
    build_cmdline,
    expected_md5,
    find_result,
    format_result,
    kernel_crash,
    last_progress,
    parse_cmdline,
    parse_result,
    pattern_block,
)
from tests.hypo import examples

md5s = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)

jobs = st.builds(
    GuestJob,
    mib=st.integers(0, 10**6),
    rate_kib_s=st.integers(0, 10**6),
    pattern=st.sampled_from(Pattern),
    seed=st.integers(0, MAX_SEED),
    device=st.sampled_from(["/dev/vda", "/dev/vdb", "/dev/sda", "/dev/nvme0n1"]),
    offset_mib=st.integers(0, 10**6),
    mode=st.sampled_from(Mode),
    expect_md5=st.one_of(st.just(""), md5s),
    hold_s=st.integers(0, 10**6),
)

seconds = st.integers(0, 10**6).map(lambda cs: cs / 100)
results = st.builds(
    GuestResult,
    mode=st.sampled_from(Mode),
    written_mib=st.integers(0, 10**7),
    verified=st.booleans(),
    md5=st.one_of(st.just(""), md5s),
    expected_md5=st.one_of(st.just(""), md5s),
    boot_s=seconds,
    write_s=seconds,
    verify_s=seconds,
    error=st.sampled_from(["", "mismatch", "write-failed", "bad-MIB", "insmod-virtio"]),
)


@given(jobs)
def test_cmdline_round_trip(job: GuestJob) -> None:
    cmdline = build_cmdline(job)
    assert cmdline.startswith("console=ttyS0 ")
    assert "no_timer_check" in cmdline.split()  # TCG on a loaded host: see BASE_CMDLINE
    assert parse_cmdline(cmdline) == job


@given(jobs)
def test_cmdline_is_plain_words(job: GuestJob) -> None:
    for word in build_cmdline(job).split():
        assert "=" in word or word in ("quiet", "no_timer_check")
        assert all(c.isprintable() and not c.isspace() for c in word)


@given(results)
def test_result_round_trip(result: GuestResult) -> None:
    line = format_result(result)
    assert parse_result(line) == result
    # kernel messages or a prompt before the marker on the same line are ignored
    assert parse_result("[   3.1] x " + line) == result


def test_find_result_takes_the_last_line() -> None:
    first = GuestResult(Mode.WRITE, 1, False, error="mismatch")
    last = GuestResult(Mode.VERIFY, 2, True, md5="a" * 32, expected_md5="a" * 32)
    text = f"boot\n{format_result(first)}\nnoise\n{format_result(last)}\n"
    assert find_result(text) == last
    assert find_result("boot\nno marker\n") is None


def test_find_result_waits_for_the_newline() -> None:
    """A serial log read while QEMU writes it can end mid-line (CI saw one cut at
    'verify_s'): that line is not a result until its newline arrives."""
    first = GuestResult(Mode.WRITE, 1, True)
    last = GuestResult(Mode.VERIFY, 2, True, md5="a" * 32, expected_md5="a" * 32)
    whole = format_result(last)
    for cut in (len(whole) // 2, whole.index("verify_s") + len("verify_s"), len(whole)):
        assert find_result(f"boot\n{whole[:cut]}") is None
        assert find_result(f"{format_result(first)}\r\n{whole[:cut]}") == first
    assert find_result(f"boot\n{whole}\r\n") == last


@pytest.mark.parametrize(
    "line",
    [
        "no marker here",
        "AUTOEXTEND-GUEST-RESULT mode=write",
        "AUTOEXTEND-GUEST-RESULT mode=write written_mib=1 verified=maybe md5=- expected_md5=- "
        "boot_s=1 write_s=1 verify_s=1 error=-",
        "AUTOEXTEND-GUEST-RESULT mode=write written_mib=x verified=ok md5=- expected_md5=- "
        "boot_s=1 write_s=1 verify_s=1 error=-",
        "AUTOEXTEND-GUEST-RESULT mode=write written_mib=1 verified=ok md5=zz expected_md5=- "
        "boot_s=1 write_s=1 verify_s=1 error=-",
        "AUTOEXTEND-GUEST-RESULT mode=read written_mib=1 verified=ok md5=- expected_md5=- "
        "boot_s=1 write_s=1 verify_s=1 error=-",
        "AUTOEXTEND-GUEST-RESULT mode=write written_mib=1 verified=ok md5=- expected_md5=- "
        "boot_s=1 write_s=1 verify_s=1 error=- stray",
    ],
)
def test_bad_result_lines_are_rejected(line: str) -> None:
    with pytest.raises(GuestResultError):
        parse_result(line)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mib": -1},
        {"mib": 1, "seed": MAX_SEED + 1},
        {"mib": 1, "device": "vda"},
        {"mib": 1, "device": "/dev/vda x"},
        {"mib": 1, "device": "/dev/vda,x"},
        {"mib": 1, "rate_kib_s": -5},
        {"mib": 1, "expect_md5": "nothex"},
        {"mib": True},
    ],
)
def test_bad_jobs_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        GuestJob(**kwargs)  # type: ignore[arg-type]


def test_cmdline_without_job_is_rejected() -> None:
    with pytest.raises(ValueError, match="ae_mib"):
        parse_cmdline("console=ttyS0 quiet")
    with pytest.raises(ValueError):
        parse_cmdline("ae_mib=1 ae_pattern=bogus")


def test_counter_pattern_matches_busybox_seq() -> None:
    block = pattern_block(Pattern.COUNTER, 7)
    lines = block.decode().splitlines()
    assert lines[0] == "700000" and lines[-1] == "765536" and len(lines) == 65537
    # not a divisor of 1 MiB: consecutive MiB of the stream differ
    assert (1 << 20) % len(block) != 0


@settings(deadline=None, max_examples=examples(25))
@given(st.integers(0, MAX_SEED), st.integers(0, MAX_SEED))
def test_seeds_give_different_data(a: int, b: int) -> None:
    if a != b:
        assert pattern_block(Pattern.COUNTER, a) != pattern_block(Pattern.COUNTER, b)


def test_expected_md5_depends_on_length_and_seed() -> None:
    one = expected_md5(GuestJob(mib=1, seed=1))
    assert one != expected_md5(GuestJob(mib=2, seed=1))
    assert one != expected_md5(GuestJob(mib=1, seed=2))
    assert expected_md5(GuestJob(mib=1, pattern=Pattern.FILL, seed=0)) == (
        "b6d81b360a5672d80c27430f39153e2c"  # md5 of 1 MiB of zero bytes
    )


def test_last_progress_reads_complete_lines_only() -> None:
    assert last_progress("boot\n") is None
    text = "AUTOEXTEND-GUEST-PROGRESS written_mib=16\n[ 1.0] AUTOEXTEND-GUEST-PROGRESS written_mib=32\n"
    assert last_progress(text) == 32
    assert last_progress(text + "AUTOEXTEND-GUEST-PROGRESS written_mib=4") == 32  # cut short
    assert last_progress(text + "AUTOEXTEND-GUEST-PROGRESS written_mib=x\n") == 32


def test_kernel_crash_finds_the_first_crash_line() -> None:
    progress = "AUTOEXTEND-GUEST-PROGRESS written_mib=16\n"
    assert kernel_crash(progress) is None
    # The two crashes the one-hour soaks saw after migrations (stops 39 and 41).
    npd = "[  826.040713] BUG: kernel NULL pointer dereference, address: 0000000000000000"
    gpf = ("[ 3113.553297] general protection fault, probably for non-canonical address "
           "0xdead00000000012a: 0000 [#1] PREEMPT SMP NOPTI")
    assert kernel_crash(progress + npd + "\n[  826.04] #PF: supervisor\n") == npd
    assert kernel_crash(gpf + "\n" + npd) == gpf
    assert kernel_crash("[ 1.0] Kernel panic - not syncing: x\n") == "[ 1.0] Kernel panic - not syncing: x"
    assert kernel_crash("written_mib=16 no BUG here\n") is None  # "BUG" without ": "
