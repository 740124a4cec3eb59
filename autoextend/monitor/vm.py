"""The monitor's shared vocabulary: the messages a VM's task handles, the policy resolver,
the hooks the service passes in, and the monitor's logger. (The objects themselves are
drawn in ``monitor/core.py``.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from autoextend.logs import get_logger
from autoextend.monitor import overrides, policy
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.protocols import DriveInfo, HypervisorEvent
from autoextend.volumes import VolumeRef

log = get_logger("monitor")

class PolicyResolver(Protocol):
    """A drive's policy, asked at every decision: the config's (:class:`FixedPolicy`), or
    one that follows what it measures (the write-rate chunks, ``monitor/chunking.py``).
    While ``sample_after_extend`` is true the monitor samples the drive once more right
    after each extension and asks again (false for a resolver that measures nothing)."""

    @property
    def sample_after_extend(self) -> bool: ...

    def __call__(self, info: DriveInfo, volume: VolumeRef) -> policy.DrivePolicy: ...


LeaseOk = Callable[[], bool]
# (volume, paused on ENOSPC) -> None to go ahead, or why the extension must wait
# (a VG at its critical level extends only drives whose VM paused on ENOSPC).
SpaceGate = Callable[[VolumeRef, bool], str | None]

VM_INBOX_SIZE = 64


class ResyncRequest:
    """Re-read everything about the VM (connect, hot-plug, pause/resume, dropped event)."""


class Poll:
    """Periodic safety-net check (or a timer: a resume or a retry is due)."""


@dataclass(frozen=True)
class ViewSuspect:
    """From the view audit to a VM's task: these drives' views looked stale
    (``monitor/views.py``)."""

    vm: str
    drives: tuple[str, ...]


@dataclass(frozen=True)
class Extended:
    """From a drive's extension task to its VM's task: the extension ended (grown and
    re-armed, deferred, failed or not needed). The VM's task acts on what it knows, with no
    fresh look: arm, retry, resume (``VmTask.after_extension``)."""

    drive: str


RESYNC = ResyncRequest()
POLL = Poll()
VmMessage = HypervisorEvent | ResyncRequest | Poll | ViewSuspect | Extended


class FixedPolicy:
    """Config defaults plus ``[[policy.overrides]]``: measures nothing."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings

    @property
    def sample_after_extend(self) -> bool:
        return False

    def __call__(self, info: DriveInfo, volume: VolumeRef) -> policy.DrivePolicy:
        return overrides.resolve(self.settings, info, volume)


def default_policy_resolver(settings: PolicySettings) -> PolicyResolver:
    """Config defaults plus ``[[policy.overrides]]``."""
    return FixedPolicy(settings)
