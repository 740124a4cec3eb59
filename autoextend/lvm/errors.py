"""Errors of the volume layer: lvm2 command failures sorted by cause, and backend-neutral kinds.

Every lvm2 failure is an :class:`LvmError` carrying the command line (with the long
``--config`` value elided), the exit status and stderr. Callers act on the subclass:
no such VG/LV, not enough free extents, lock contention, timeout, missing PV, unusable
report. :class:`VolumeNotFound` and :class:`VolumeSpaceError` (defined in
:mod:`autoextend.volumes`, re-exported here) are the backend-neutral kinds both the ``lvm``
and ``loop`` backends raise, so the contract tests and callers need not know which backend
they talk to.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoextend.errors import VolumeError
from autoextend.volumes import VolumeExists, VolumeNotFound, VolumeSpaceError

__all__ = ["VolumeExists", "VolumeNotFound", "VolumeSpaceError"]


def display_argv(argv: Sequence[str]) -> str:
    """The command line for messages and logs, ``--config`` and ``-o`` values elided."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("<fields>" if shown[-1] == "-o" else "<config>")
            hide_next = False
        elif arg in ("--config", "-o"):
            shown.append(arg)
            hide_next = True
        elif arg.startswith("--config="):
            shown.append("--config=<config>")
        else:
            shown.append(arg)
    return " ".join(shown)


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    interesting = [line for line in lines if not line.startswith("WARNING: Activation disabled")]
    return " | ".join(interesting[-count:])


class LvmError(VolumeError):
    """An lvm2 command failed. ``argv`` is the full command, ``returncode`` is None when the
    command never finished (timeout, killed session)."""

    summary = "lvm command failed"

    def __init__(
        self, argv: Sequence[str], stderr: str = "", returncode: int | None = None
    ) -> None:
        self.argv = tuple(argv)
        self.stderr = stderr
        self.returncode = returncode
        # The command's target (``vg/lv`` or ``vg``): its last positional argument.
        positional = [
            arg
            for prev, arg in zip(self.argv, self.argv[1:], strict=False)
            if not arg.startswith("-") and prev != "--config"
        ]
        self.volume = positional[-1] if positional else ""
        # Not super(): the backend-neutral mixins (VolumeNotFound, ...) take other arguments.
        VolumeError.__init__(self, self._message())

    def _message(self) -> str:
        message = f"{self.summary}: {display_argv(self.argv)}"
        if self.returncode is not None:
            message += f" (exit {self.returncode})"
        detail = _last_lines(self.stderr)
        if detail:
            message += f": {detail}"
        return message


class LvmCommandError(LvmError):
    """Any failure not sorted into a more specific class."""


class NoSuchVolumeGroup(LvmError, VolumeNotFound):
    summary = "no such volume group"


class NoSuchLogicalVolume(LvmError, VolumeNotFound):
    summary = "no such logical volume"


class InsufficientFreeExtents(LvmError, VolumeSpaceError):
    summary = "not enough free extents in the volume group"


class LvmLockError(LvmError):
    summary = "could not take the lvm lock"


class MissingPvError(LvmError):
    summary = "a physical volume of the volume group is missing"


class DeviceMapperUnavailable(LvmError):
    summary = "device-mapper is not available on this host"


class LvmTimeoutError(LvmError):
    """The command did not finish within ``timeout_s``; it was killed and reaped."""

    summary = "lvm command timed out and was killed"

    def __init__(self, argv: Sequence[str], timeout_s: float, stderr: str = "") -> None:
        self.timeout_s = timeout_s
        super().__init__(argv, stderr, None)

    def _message(self) -> str:
        return f"{super()._message()} (after {self.timeout_s:g} s)"


class LvmReportError(LvmError):
    """lvm2 printed a report that is not what was asked for; nothing was acted on."""

    summary = "unusable lvm report"

    def __init__(self, argv: Sequence[str], reason: str, stdout: str = "") -> None:
        self.reason = reason
        self.stdout = stdout
        super().__init__(argv, reason, 0)


class ReportFormatError(VolumeError):
    """Raised by the pure report parsers; the runner layer re-raises it as LvmReportError."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"bad lvm report: {reason}")


# Order matters: the first match wins. Patterns are lower-case substrings of LC_ALL=C stderr.
_CLASSIFIERS: tuple[tuple[type[LvmError], tuple[str, ...]], ...] = (
    (LvmLockError, ("can't get lock", "failed to lock", "lock timeout", "resource temporarily")),
    (MissingPvError, ("pvs are missing", "couldn't find device with uuid", "missing pv")),
    (
        DeviceMapperUnavailable,
        ("device-mapper driver", "/dev/mapper/control", "check that device-mapper"),
    ),
    (NoSuchVolumeGroup, ("volume group \"", "not found")),
    (NoSuchLogicalVolume, ("failed to find logical volume", "not found in volume group")),
    (InsufficientFreeExtents, ("insufficient free space", "insufficient suitable allocatable")),
)


def classify_failure(argv: Sequence[str], returncode: int, stderr: str) -> LvmError:
    """Sort a failed command into its error class by its stderr (pure)."""
    text = stderr.lower()
    for cls, needles in _CLASSIFIERS:
        if cls is NoSuchVolumeGroup:
            if any(
                "volume group" in line and "not found" in line and "logical volume" not in line
                for line in text.splitlines()
            ):
                return cls(argv, stderr, returncode)
            continue
        if any(needle in text for needle in needles):
            return cls(argv, stderr, returncode)
    return LvmCommandError(argv, stderr, returncode)
