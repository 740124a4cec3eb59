"""What a config reload applies to a running service, and what needs a restart (pure).

A reload (SIGHUP, or the control socket's ``reload``) applies what the running parts can take
without being rebuilt: the policy numbers and overrides, the resume policy, dry-run, the
log settings and ``lease.spm_priority`` (it only decides when this host starts a ballot, and
it is published at the next renewal; a running SPM term is kept). Every other key (the
hypervisor, the extender, the volume backend, the rest of the lease, the mailbox, sockets and
endpoints, a VG reserve, the extent size the reserve rounds with, and the extension deadline
in mailbox mode) is fixed when the service starts. A reload that
changes one of those keeps running with the old value and names the key; ``status`` shows the
config in effect and the keys waiting for a restart, never a value that is not in effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoextend.config import Settings

#: Keys (dotted prefixes) a reload applies.
LIVE = ("policy", "resume", "service.dry_run", "service.log_level", "service.log_format",
        "service.reload_max_factor", "lease.spm_priority")
#: Keys under a live prefix that are nevertheless fixed at start: the reserve wrapper and its
#: extent rounding are built with the volume backend.
FIXED = ("policy.vg_reserve_mib", "policy.extent_mib")
_SERVICE_LIVE = ("dry_run", "log_level", "log_format", "reload_max_factor")
_MISSING = object()


@dataclass(frozen=True)
class ReloadPlan:
    effective: Settings               # what runs after the reload
    applied: tuple[str, ...]          # changed keys now in effect
    needs_restart: tuple[str, ...]    # keys whose file value differs from the running one


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_live(key: str) -> bool:
    return _under(key, LIVE) and not _under(key, FIXED)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested tables (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty table
    has no keys); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def changed_keys(old: Settings, new: Settings) -> list[str]:
    before, after = flatten(old.model_dump()), flatten(new.model_dump())
    return sorted(k for k in before.keys() | after.keys()
                  if before.get(k, _MISSING) != after.get(k, _MISSING))


def plan(running: Settings, new: Settings) -> ReloadPlan:
    """``running``: the config in effect; ``new``: the file's (validated) config."""
    changed = changed_keys(running, new)
    policy = new.policy.model_copy(update={"vg_reserve_mib": running.policy.vg_reserve_mib,
                                           "extent_mib": running.policy.extent_mib})
    service = running.service.model_copy(
        update={k: getattr(new.service, k) for k in _SERVICE_LIVE}
    )
    lease = running.lease.model_copy(update={"spm_priority": new.lease.spm_priority})
    effective = running.model_copy(
        update={"policy": policy, "resume": new.resume, "service": service, "lease": lease}
    )
    return ReloadPlan(
        effective,
        tuple(k for k in changed if is_live(k)),
        tuple(k for k in changed if not is_live(k)),
    )
