"""QEMU's migration state in the monitor's neutral terms (pure; no I/O).

Two replies say it all: ``query-status`` (``inmigrate`` on a destination until the incoming
migration completes, ``postmigrate`` on a source after it completed) and ``query-migrate``
(``status``: setup, active, completed, failed, cancelled, ...; absent when no migration ever
ran). QEMU reports the outgoing migration when there is one, else the incoming one: so a
running VM whose ``query-migrate`` says ``completed`` arrived here by migration (or was
resumed on its source after one); either way its view must be refreshed before it is armed.

The ``MIGRATION`` event (sent when the ``events`` migration capability is on, as libvirt and
the lab set it) carries only the new status: it becomes a neutral
:class:`~autoextend.monitor.protocols.MigrationChanged` and the monitor asks again.
"""

from __future__ import annotations

from collections.abc import Mapping

from autoextend.monitor.migration import MigrationInfo, Phase, Role
from autoextend.qmp.errors import MalformedReply

_PHASES: dict[str, Phase] = {
    "none": Phase.NONE,
    "setup": Phase.SETUP,
    "active": Phase.ACTIVE,
    "pre-switchover": Phase.ACTIVE,
    "device": Phase.ACTIVE,
    "wait-unplug": Phase.ACTIVE,
    "postcopy-active": Phase.ACTIVE,
    "postcopy-paused": Phase.ACTIVE,
    "postcopy-recover": Phase.ACTIVE,
    "colo": Phase.ACTIVE,
    "cancelling": Phase.ACTIVE,  # not over yet: the source's view stays frozen
    "completed": Phase.COMPLETED,
    "failed": Phase.FAILED,
    "cancelled": Phase.CANCELLED,
}


def migration_phase(vm: str, query_migrate: object) -> Phase:
    """The phase a ``query-migrate`` reply (or a ``MIGRATION`` event's data) states.

    Raises:
        MalformedReply: not an object, or a status that is not a string. An unknown status
            string counts as ACTIVE (a newer QEMU's intermediate step: keep the view frozen).
    """
    if not isinstance(query_migrate, dict):
        raise MalformedReply(vm, "query-migrate", "expected an object")
    status = query_migrate.get("status", "none")
    if not isinstance(status, str) or len(status) > 64:
        raise MalformedReply(vm, "query-migrate", "status: expected a short string")
    return _PHASES.get(status, Phase.ACTIVE)


def migration_info(vm: str, run_status: str, query_migrate: object) -> MigrationInfo:
    """The VM's migration role and phase from its ``query-status`` status string and its
    ``query-migrate`` reply."""
    phase = migration_phase(vm, query_migrate)
    if run_status == "inmigrate":
        if phase in (Phase.NONE, Phase.COMPLETED):
            phase = Phase.PENDING  # waiting for migrate-incoming / the source to connect
        return MigrationInfo(Role.DESTINATION, phase)
    if run_status in ("postmigrate", "finish-migrate"):
        # finish-migrate: the source is switching over (guest stopped for the last pass).
        done = run_status == "postmigrate" and phase is Phase.COMPLETED
        return MigrationInfo(Role.SOURCE, Phase.COMPLETED if done else Phase.ACTIVE)
    if phase is Phase.NONE:
        return MigrationInfo(Role.NONE, Phase.NONE)
    if phase is Phase.COMPLETED:
        return MigrationInfo(Role.DESTINATION, Phase.COMPLETED)
    return MigrationInfo(Role.SOURCE, phase)


def activated_lengths(capabilities: object, run_status: str, nodes: object,
                      drive_nodes: Mapping[str, str]) -> tuple[tuple[str, int], ...] | None:
    """Per drive (``drive_nodes``: drive -> its protocol node), the length QEMU activated
    the node with (``query-named-block-nodes``: ``image.virtual-size``, QEMU 7.2's cached
    length), on a destination whose incoming migration completed; None while the nodes
    await activation (the ``late-block-activate`` capability on and the VM not running:
    ``cont`` activates them and reads the length then) or when a reply cannot tell.

    A drive whose node is missing from ``nodes`` is left out."""
    if not isinstance(capabilities, list) or not isinstance(nodes, list):
        return None
    late = any(isinstance(c, dict) and c.get("capability") == "late-block-activate"
               and c.get("state") is True for c in capabilities)
    if late and run_status != "running":
        return None
    lengths: dict[str, int] = {}
    for entry in nodes:
        if not isinstance(entry, dict):
            continue
        image = entry.get("image")
        size = image.get("virtual-size") if isinstance(image, dict) else None
        if isinstance(size, int) and not isinstance(size, bool):
            lengths[str(entry.get("node-name"))] = size
    return tuple((drive, lengths[node]) for drive, node in sorted(drive_nodes.items())
                 if node in lengths)


def guest_did_io(blockstats: object) -> bool | None:
    """Whether the guest has done block I/O since its QEMU started: any device's read, write
    or flush operations in a device-level ``query-blockstats`` reply (QEMU counts them per
    device from zero in each process; an incoming migration does not carry them, and QEMU's
    own metadata reads at activation are not a device's). None when the reply cannot tell.

    A destination whose guest did I/O has run here: it is too late to stop it before it
    reads, and a stop would lose a running guest (a user's pause, an ENOSPC pause after
    it ran), so the short-activation guard leaves it alone."""
    if not isinstance(blockstats, list):
        return None
    for entry in blockstats:
        stats = entry.get("stats") if isinstance(entry, dict) else None
        if not isinstance(stats, dict):
            return None
        for key in ("rd_operations", "wr_operations", "flush_operations"):
            ops = stats.get(key, 0)
            if not isinstance(ops, int) or isinstance(ops, bool):
                return None
            if ops > 0:
                return True
    return False
