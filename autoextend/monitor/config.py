"""The ``[policy]`` section: when to extend and by how much.

Defaults follow vdsm (../shared/reference/vdsm.md): chunk 2560 MiB, utilization 20 %
(so extend when less than 80 % of a chunk = 2048 MiB is free), cap = capacity x 1.1,
a 2 s fallback poll.

``[[policy.overrides]]`` entries change chunk, utilization or cap for the drives they match
(by VG, LV, VM and/or drive; every given field must match; the last matching entry wins per
key). ``[policy.vg_reserve_mib]`` keeps free space in a VG that autoextend never uses.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from autoextend.confbase import Section


class PolicyOverride(Section):
    # What the entry matches: the drive's VG, LV, VM and drive names (every one given must
    # match; at least one is needed).
    vg: str | None = None
    lv: str | None = None
    vm: str | None = None
    drive: str | None = None
    # Instead of [policy]'s value for the matching drives (the last matching entry wins per
    # key; at least one is needed).
    chunk_mib: int | None = Field(None, ge=1, le=1 << 24)
    utilization_percent: int | None = Field(None, ge=0, le=99)
    cap_factor: float | None = Field(None, ge=1.0, le=4.0)

    @model_validator(mode="after")
    def _useful(self) -> PolicyOverride:
        if not any((self.vg, self.lv, self.vm, self.drive)):
            raise ValueError("an override needs at least one of vg, lv, vm, drive to match")
        if self.chunk_mib is None and self.utilization_percent is None and self.cap_factor is None:
            raise ValueError("an override must set chunk_mib, utilization_percent or cap_factor")
        return self


class PolicySettings(Section):
    chunk_mib: int = Field(2560, ge=1, le=1 << 24)
    utilization_percent: int = Field(20, ge=0, le=99)
    cap_factor: float = Field(1.1, ge=1.0, le=4.0)
    extent_mib: int = Field(128, ge=1, le=1 << 16)
    poll_interval_s: float = Field(2.0, gt=0.0, le=3600.0)
    full_poll_interval_s: float | None = Field(None, gt=0.0, le=86400.0)
    extend_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    retry_initial_s: float = Field(1.0, gt=0.0, le=600.0)
    retry_max_s: float = Field(30.0, gt=0.0, le=3600.0)
    job_chunk_factor: float = Field(2.0, ge=1.0, le=16.0)
    # One event (a crossing, an ENOSPC, a poll) grows a drive by at most this many chunks,
    # unless two fresh samples of its allocation agree that it needs more (a bogus
    # allocation cannot take chunk after chunk up to the cap; monitor/plan.py: agree).
    max_chunks_per_event: int = Field(4, ge=1, le=1024)
    job_pre_extend: bool = True
    chunk_mode: Literal["fixed", "write_rate", "write_rate_throttle"] = "fixed"
    min_chunk_mib: int = Field(256, ge=1, le=1 << 24)
    max_chunk_mib: int = Field(20480, ge=1, le=1 << 24)
    rate_margin: float = Field(2.0, ge=1.0, le=100.0)
    rate_half_life_s: float = Field(30.0, gt=0.0, le=86400.0)
    assumed_latency_s: float = Field(1.0, gt=0.0, le=3600.0)
    overrides: tuple[PolicyOverride, ...] = Field((), strict=False)
    vg_reserve_mib: dict[str, int] = Field(default_factory=dict)
    reduce_on_stop: bool = False
    # A drive whose write error policy is report or ignore hands an ENOSPC to the guest as an
    # I/O error (the write is lost) instead of pausing the VM. true: still extend it (the
    # threshold usually comes first); false: leave it alone (it is listed in status).
    manage_enospc_to_guest: bool = True
    # Throttle before pause: while a drive's extension runs and its free space above the
    # threshold would run out before the extension lands (the p99 of recent extensions, or
    # twice the SPM failover bound once an extension outlived it), limit the guest's writes to that
    # drive so the space lasts; lifted when the grown drive is re-armed, and the drive's
    # own limits are restored exactly. false: never throttle.
    throttle: bool = True
    # The lowest write limit the throttle sets (MiB/s): below it the guest may still pause.
    throttle_floor_mib_s: int = Field(4, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _reserves_positive(self) -> PolicySettings:
        if self.min_chunk_mib > self.max_chunk_mib:
            raise ValueError("min_chunk_mib must be <= max_chunk_mib")
        if self.chunk_mode == "write_rate_throttle" and not self.throttle:
            raise ValueError('chunk_mode = "write_rate_throttle" needs throttle = true '
                             '(the throttle carries what its chunks do not)')
        for vg, mib in self.vg_reserve_mib.items():
            if mib < 0:
                raise ValueError(f"vg_reserve_mib.{vg} must be >= 0")
        return self


class ResumeOverride(Section):
    """``[[resume.overrides]]``: another policy for the VMs it names (the last match wins)."""

    # The VM (its name) this entry applies to.
    vm: str
    # Instead of [resume]'s value for this VM (the last matching entry wins; at least one).
    policy: Literal["auto", "leave", "kill"] | None = None
    kill_after_s: float | None = Field(None, gt=0.0, le=86400.0)

    @model_validator(mode="after")
    def _useful(self) -> ResumeOverride:
        if self.policy is None and self.kill_after_s is None:
            raise ValueError("an override must set policy or kill_after_s")
        return self


class ResumeSettings(Section):
    """``[resume]``: what to do with a VM that QEMU paused on an I/O error (not ENOSPC).

    ``auto`` (default): resume once a storage probe of every drive in error succeeded twice
    in a row (and, in mailbox mode, this host's lease is valid), at most one resume per
    backoff step. ``leave``: leave it paused for an operator. ``kill``: like ``auto``, but
    terminate the VM once it has been paused for ``kill_after_s`` (for VMs that another host
    restarts). ENOSPC pauses on drives autoextend does not manage are never resumed.
    """

    policy: Literal["auto", "leave", "kill"] = "auto"
    kill_after_s: float = Field(80.0, gt=0.0, le=86400.0)
    backoff_initial_s: float = Field(1.0, gt=0.0, le=600.0)
    backoff_max_s: float = Field(30.0, gt=0.0, le=3600.0)
    probe_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    overrides: tuple[ResumeOverride, ...] = Field((), strict=False)

    @model_validator(mode="after")
    def _ordered(self) -> ResumeSettings:
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must be <= backoff_max_s")
        return self

    def for_vm(self, vm: str) -> tuple[str, float]:
        """(policy, kill_after_s) for one VM: the defaults, then matching overrides in order."""
        policy, kill_after = self.policy, self.kill_after_s
        for o in self.overrides:
            if o.vm == vm:
                policy = o.policy or policy
                kill_after = o.kill_after_s if o.kill_after_s is not None else kill_after
        return policy, kill_after
