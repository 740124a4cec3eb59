"""The lab guest's job and result: kernel command line in, one result line out (pure code).

A :class:`GuestJob` says what the guest does: write ``mib`` MiB of a reproducible pattern at
``offset_mib`` on ``device`` (at ``rate_kib_s`` KiB/s, 0 = as fast as it can), then read it
back and compare digests; or, with ``mode=VERIFY``, only read back and compare (to check data
written by an earlier boot). :func:`build_cmdline` encodes a job as ``ae_*`` kernel
parameters; :func:`parse_result` decodes the line the guest prints when it is done::

    AUTOEXTEND-GUEST-RESULT mode=write written_mib=256 verified=ok md5=... expected_md5=...
        boot_s=1.62 write_s=2.41 verify_s=9.80 error=-
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass, replace

from autoextend.lab.errors import GuestResultError

RESULT_MARKER = "AUTOEXTEND-GUEST-RESULT"
START_MARKER = "AUTOEXTEND-GUEST-START"
PROGRESS_MARKER = "AUTOEXTEND-GUEST-PROGRESS"
# no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can miss its
# window and panic in start_kernel ("IO-APIC + timer doesn't work!"); seen in 3 of 16 boots
# beside two busy test runs, 0 of 24 with the check off. Timer checking tests the emulator,
# not autoextend, so the lab guest skips it (as most CI images for TCG guests do).
BASE_CMDLINE = ("console=ttyS0", "quiet", "panic=-1", "no_timer_check")
MAX_SEED = 10**9  # seed * 100000 + 65536 stays exact in busybox seq's doubles
MAX_NUMBER = 10**12 - 1  # the guest rejects numbers longer than 12 digits
MiB = 1 << 20

_DEVICE_RE = re.compile(r"/dev/[a-z][a-z0-9/]*\Z")
_MD5_RE = re.compile(r"[0-9a-f]{32}\Z")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.:/+-]+\Z")


class Pattern(enum.Enum):
    COUNTER = "counter"  # zero-padded decimal lines seed*100000 .. seed*100000+65536, repeated
    FILL = "fill"        # every byte is seed % 256


class Mode(enum.Enum):
    WRITE = "write"    # write, then read back and verify
    VERIFY = "verify"  # read back and verify only


@dataclass(frozen=True)
class GuestJob:
    mib: int
    rate_kib_s: int = 0
    pattern: Pattern = Pattern.COUNTER
    seed: int = 1
    device: str = "/dev/vda"
    offset_mib: int = 0
    mode: Mode = Mode.WRITE
    expect_md5: str = ""  # if set, the guest compares with this instead of regenerating
    # seconds the guest waits between its writes and its read-back (printing a HOLD line
    # first): a test can stop it there, e.g. for a migration's switchover
    hold_s: int = 0

    def __post_init__(self) -> None:
        for name in ("mib", "rate_kib_s", "offset_mib", "hold_s"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not (
                0 <= value <= MAX_NUMBER
            ):
                raise ValueError(f"{name} must be an integer in 0..{MAX_NUMBER}, got {value!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in 0..{MAX_SEED}, got {self.seed!r}")
        if not _DEVICE_RE.match(self.device):
            raise ValueError(f"device must look like /dev/vda, got {self.device!r}")
        if self.expect_md5 and not _MD5_RE.match(self.expect_md5):
            raise ValueError(f"expect_md5 must be 32 lowercase hex digits, got {self.expect_md5!r}")


def build_cmdline(job: GuestJob, extra: tuple[str, ...] = ()) -> str:
    """The kernel command line that runs ``job`` (console on ttyS0, quiet, panic reboots)."""
    params = [
        *BASE_CMDLINE,
        *extra,
        f"ae_mib={job.mib}",
        f"ae_rate_kib={job.rate_kib_s}",
        f"ae_pattern={job.pattern.value}",
        f"ae_seed={job.seed}",
        f"ae_dev={job.device}",
        f"ae_offset_mib={job.offset_mib}",
        f"ae_mode={job.mode.value}",
    ]
    if job.expect_md5:
        params.append(f"ae_expect={job.expect_md5}")
    if job.hold_s:
        params.append(f"ae_hold_s={job.hold_s}")
    return " ".join(params)


def parse_cmdline(cmdline: str) -> GuestJob:
    """The job a kernel command line carries (the inverse of :func:`build_cmdline`).

    Raises:
        ValueError: a missing ``ae_mib`` or a bad value.
    """
    values: dict[str, str] = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep and key.startswith("ae_"):
            values[key] = value
    if "ae_mib" not in values:
        raise ValueError("no ae_mib in the kernel command line")
    try:
        return GuestJob(
            mib=int(values["ae_mib"]),
            rate_kib_s=int(values.get("ae_rate_kib", "0")),
            pattern=Pattern(values.get("ae_pattern", "counter")),
            seed=int(values.get("ae_seed", "1")),
            device=values.get("ae_dev", "/dev/vda"),
            offset_mib=int(values.get("ae_offset_mib", "0")),
            mode=Mode(values.get("ae_mode", "write")),
            expect_md5=values.get("ae_expect", ""),
            hold_s=int(values.get("ae_hold_s", "0")),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"bad guest job: {err}") from err


@dataclass(frozen=True)
class GuestResult:
    """What the guest reported. ``md5``/``expected_md5`` are empty when not computed;
    ``error`` is empty on success, else a short code (``mismatch``, ``write-failed``, ...)."""

    mode: Mode
    written_mib: int
    verified: bool
    md5: str = ""
    expected_md5: str = ""
    boot_s: float = 0.0
    write_s: float = 0.0
    verify_s: float = 0.0
    error: str = ""


def _opt(value: str) -> str:
    return value or "-"


def format_result(result: GuestResult) -> str:
    """The result line as the guest prints it (centisecond resolution for times)."""
    return (
        f"{RESULT_MARKER} mode={result.mode.value} written_mib={result.written_mib} "
        f"verified={'ok' if result.verified else 'fail'} md5={_opt(result.md5)} "
        f"expected_md5={_opt(result.expected_md5)} boot_s={result.boot_s:.2f} "
        f"write_s={result.write_s:.2f} verify_s={result.verify_s:.2f} "
        f"error={_opt(result.error)}"
    )


def _field(fields: dict[str, str], key: str, line: str) -> str:
    try:
        return fields[key]
    except KeyError:
        raise GuestResultError(line, f"missing {key}") from None


def parse_result(line: str) -> GuestResult:
    """Parse the guest's result line (anything before the marker is ignored).

    Raises:
        GuestResultError: no marker, a missing field or a bad value.
    """
    at = line.find(RESULT_MARKER)
    if at < 0:
        raise GuestResultError(line, "no result marker")
    fields: dict[str, str] = {}
    for word in line[at + len(RESULT_MARKER):].split():
        key, sep, value = word.partition("=")
        if not sep:
            raise GuestResultError(line, f"word without '=': {word!r}")
        fields[key] = value
    try:
        md5 = _field(fields, "md5", line)
        expected = _field(fields, "expected_md5", line)
        for digest in (md5, expected):
            if digest != "-" and not _MD5_RE.match(digest):
                raise ValueError(f"bad md5 {digest!r}")
        verified = _field(fields, "verified", line)
        if verified not in ("ok", "fail"):
            raise ValueError(f"verified must be ok or fail, got {verified!r}")
        error = _field(fields, "error", line)
        if not _TOKEN_RE.match(error):
            raise ValueError(f"bad error code {error!r}")
        written = int(_field(fields, "written_mib", line))
        if written < 0:
            raise ValueError("negative written_mib")
        return GuestResult(
            mode=Mode(_field(fields, "mode", line)),
            written_mib=written,
            verified=verified == "ok",
            md5="" if md5 == "-" else md5,
            expected_md5="" if expected == "-" else expected,
            boot_s=float(_field(fields, "boot_s", line)),
            write_s=float(_field(fields, "write_s", line)),
            verify_s=float(_field(fields, "verify_s", line)),
            error="" if error == "-" else error,
        )
    except ValueError as err:
        raise GuestResultError(line, str(err)) from None


def find_result(serial_text: str) -> GuestResult | None:
    """The last complete result line in a serial log, or None when the guest has not
    printed one yet.

    A serial log is read while QEMU still writes it: a last line without its newline may
    be cut short, so it does not count until the newline arrives."""
    found = None
    complete, _, _ = serial_text.rpartition("\n")
    for line in complete.splitlines():
        if RESULT_MARKER in line:
            found = line
    return parse_result(found) if found is not None else None


#: How the guest's kernel reports that it crashed (x86 oops, general protection fault, panic).
KERNEL_CRASH_MARKERS = ("BUG: ", "general protection fault", "Oops: ", "Kernel panic")


def kernel_crash(serial_text: str) -> str | None:
    """The first line in which the guest's kernel reports a crash, or None. The guest runs
    from its initramfs, so a crash there is its RAM's state (after a migration: what the
    migration carried), not data read from its disk."""
    for line in serial_text.splitlines():
        if any(marker in line for marker in KERNEL_CRASH_MARKERS):
            return line.strip()[:200]
    return None


def last_progress(serial_text: str) -> int | None:
    """The guest's last complete progress report (MiB written), or None before the first."""
    found = None
    complete, _, _ = serial_text.rpartition("\n")
    for line in complete.splitlines():
        at = line.find(PROGRESS_MARKER)
        if at < 0:
            continue
        _, sep, value = line[at + len(PROGRESS_MARKER):].strip().partition("written_mib=")
        if sep and value.isdigit():
            found = int(value)
    return found


def pattern_block(pattern: Pattern, seed: int) -> bytes:
    """The block the guest repeats to make its data stream (same bytes as its ``seq -w``)."""
    if pattern is Pattern.FILL:
        return bytes([seed % 256]) * MiB
    first = seed * 100000
    last = first + 65536
    width = len(str(last))
    return b"".join(b"%0*d\n" % (width, n) for n in range(first, last + 1))


def expected_md5(job: GuestJob) -> str:
    """The digest of ``job``'s data stream, computed on the host (about 1 s per GiB).

    Give it to the guest as ``expect_md5`` to save it regenerating the stream (the slowest
    part of a verify under TCG), or compare it with the guest's ``expected_md5``."""
    block = pattern_block(job.pattern, job.seed)
    digest = hashlib.md5(usedforsecurity=False)
    remaining = job.mib * MiB
    repeat = block * max(1, (8 * MiB) // len(block))
    while remaining > 0:
        piece = repeat[:remaining]
        digest.update(piece)
        remaining -= len(piece)
    return digest.hexdigest()


def with_expected_md5(job: GuestJob) -> GuestJob:
    """``job`` with ``expect_md5`` filled in from :func:`expected_md5` (CPU-bound: call it
    in a worker thread from async code)."""
    return job if job.expect_md5 else replace(job, expect_md5=expected_md5(job))
