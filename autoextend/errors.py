"""The root of every error autoextend raises on purpose.

Each subclass carries the fields its message is made from, so callers can act on them and
logs can show them as structured keys. User-facing errors are printed as one line (the CLI
turns them into exit code 2 for bad input, 1 for runtime failures).
"""

from __future__ import annotations

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def one_line(text: str) -> str:
    """``text`` fit for one line of a terminal or a journal: runs of whitespace become one
    space, other control characters (NUL, ESC, ...) are shown escaped."""
    return " ".join(text.split()).translate(_CONTROL)


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
        super().__init__(one_line(f"{source}: " + "; ".join(parts)))


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


class StartupError(AutoextendError):
    """Something this host lacks or refuses stopped the service from starting (a port in
    use, a missing metadata area, a socket directory that cannot exist): the environment,
    not the config file. The CLI prints it on one line and exits 1.

    ``what`` names the part that could not start (``metrics endpoint 127.0.0.1:9466``),
    ``reason`` says why (``address already in use``).
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(one_line(f"{what}: {reason}"))
