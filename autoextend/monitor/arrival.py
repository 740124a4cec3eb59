"""A VM that arrived paused from a live migration: what its task remembers while it finds
out whether the pause was the source's ENOSPC pause (pure data; the steps are in
``monitor/handoff.py``, the argument in ``spm/handoff.py``)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from autoextend.volumes import VolumeRef

#: Per host id, the (generation, seq) of its in-use record when the VM arrived: what a
#: claim's record must have moved past to count (``spm/handoff.py``, rule 2).
Baseline = Mapping[int, tuple[int, int]]


class ArrivalState(enum.Enum):
    WAITING = "waiting"          # looking for a fresh claim, until ``deadline``
    ADOPTED = "adopted"          # a claim was adopted: the pause is this host's ENOSPC pause
    UNCLAIMED = "unclaimed"      # no claim came in time: never resumed here
    NO_CHANNEL = "no-channel"    # local mode: no shared record to learn from: never resumed


@dataclass
class Arrival:
    state: ArrivalState
    deadline: float = 0.0
    baseline: Baseline | None = None  # None: not read yet (the next look reads it)
    origin: int = 0       # the adopted claim's host
    pause_id: int = 0     # the adopted claim's pause

    @property
    def resumable(self) -> bool:
        return self.state is ArrivalState.ADOPTED


@dataclass(frozen=True)
class ClaimedPause:
    """A fresh claim another host published for a VM (``spm/handoff.py``)."""

    origin: int                     # the host that paused the VM
    pause_id: int                   # the pause's identity there
    volumes: frozenset[VolumeRef]   # the VM's volumes it ran out of space on


class PauseHandoff(Protocol):
    """The shared records a destination learns an arrived pause's cause from (mailbox mode:
    the in-use records, ``spm/handoffio.py``). Every method raises AutoextendError when the
    records cannot be read or written."""

    async def baseline(self) -> Baseline:
        """Every host's record's (generation, seq) now."""
        ...

    async def claimed(self, vm: str, volumes: Collection[VolumeRef],
                      baseline: Baseline) -> ClaimedPause | None:
        """A claim of the VM's pause (on some of ``volumes``) that another host published
        after ``baseline`` was read and that no host adopted; None: none (yet)."""
        ...

    async def adopt(self, vm: str, pause: ClaimedPause) -> None:
        """Publish this host's tombstone for ``pause``; returns once it is written."""
        ...
