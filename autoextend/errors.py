"""The root of every error autoextend raises on purpose.

Each subclass carries the fields its message is made from, so callers can act on them and
logs can show them as structured keys. User-facing errors are printed as one line (the CLI
turns them into exit code 2 for bad input, 1 for runtime failures).
"""

from __future__ import annotations


class AutoextendError(Exception):
    """Root of all autoextend errors."""


class ConfigError(AutoextendError):
    """The configuration file or a CLI argument is unusable.

    ``problems`` is a list of ``(key, message)`` pairs; key is dotted (``policy.chunk_mib``)
    or empty when the problem is with the file as a whole.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        parts = [f"{key}: {msg}" if key else msg for key, msg in problems]
        super().__init__(f"{source}: " + "; ".join(parts))


class LabError(AutoextendError):
    """The one-machine lab could not set something up (guest build, loop device, daemon)."""


class HypervisorError(AutoextendError):
    """A hypervisor backend call failed (QMP or libvirt)."""


class VolumeError(AutoextendError):
    """A volume backend operation failed."""


class ServiceNotRunning(AutoextendError):
    """The CLI could not reach the running service over its control socket."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"autoextend service is not running (control socket {path}: {reason})")


class NotSpmError(AutoextendError):
    """An SPM-only action was attempted without a valid SPM lease (never held, or it may
    have expired: the holder fences itself before any other host could take over)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"not SPM: {reason}")
