"""Errors of the one-machine lab (guest build, thin volumes, QEMU, libvirtd).

All derive from :class:`autoextend.errors.LabError` and carry the fields their message is
made from.
"""

from __future__ import annotations

from collections.abc import Sequence

from autoextend.errors import LabError


def _tail(text: str, lines: int = 5) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


class CommandError(LabError):
    """An external command (qemu-img, apt-get, dpkg, ...) failed."""

    def __init__(self, command: Sequence[str], returncode: int, stderr: str) -> None:
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr.strip()
        detail = _tail(self.stderr) or f"exit code {returncode}"
        super().__init__(f"{' '.join(self.command)}: {detail}")


class GuestBuildError(LabError):
    """The guest image (kernel + initramfs) could not be built."""

    def __init__(self, step: str, reason: str) -> None:
        self.step = step
        self.reason = reason
        super().__init__(f"guest build failed at {step}: {reason}")


class GuestResultError(LabError):
    """A guest result line is missing or malformed."""

    def __init__(self, line: str, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"bad guest result line ({reason}): {line[:200]!r}")


class VmError(LabError):
    """A lab QEMU process failed to start, exited unexpectedly, or timed out."""

    def __init__(self, name: str, reason: str, serial_tail: str = "") -> None:
        self.name = name
        self.reason = reason
        self.serial_tail = serial_tail
        msg = f"vm {name}: {reason}"
        if serial_tail:
            msg += f" (serial: {_tail(serial_tail, 3)})"
        super().__init__(msg)


class LibvirtdError(LabError):
    """The lab's libvirtd (or virtlogd) did not start or stop cleanly."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        self.reason = reason
        self.log_tail = log_tail
        msg = reason + (f" (log: {_tail(log_tail, 3)})" if log_tail else "")
        super().__init__(msg)
