"""The libvirt backend's migration awareness: the job and lifecycle events mapped to the
monitor's neutral terms (pure), and ``migration()`` against a real lab libvirtd domain.

A real migration between two libvirtd instances is not run here (see docs/migration.md): the
QMP end-to-end tests (tests/e2e/test_migration.py) migrate real guests.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import libvirt
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.libvirt_backend.migration import migration_event, migration_of
from autoextend.monitor.migration import NOT_MIGRATING, MigrationInfo, Phase, Role
from autoextend.monitor.protocols import HypervisorEvent, MigrationChanged, VmAppeared

from .harness import lab_domains

RUNNING = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)
PAUSED_MIGRATION = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION)
OUT = libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT
IN = libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN


@pytest.mark.parametrize(("job", "state", "expected"), [
    ({}, RUNNING, NOT_MIGRATING),
    ({"type": libvirt.VIR_DOMAIN_JOB_NONE}, RUNNING, NOT_MIGRATING),
    ({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": OUT}, RUNNING,
     MigrationInfo(Role.SOURCE, Phase.ACTIVE)),
    ({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": OUT}, PAUSED_MIGRATION,
     MigrationInfo(Role.SOURCE, Phase.ACTIVE)),
    ({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "operation": IN}, PAUSED_MIGRATION,
     MigrationInfo(Role.DESTINATION, Phase.ACTIVE)),
    ({"type": libvirt.VIR_DOMAIN_JOB_FAILED, "operation": OUT}, RUNNING,
     MigrationInfo(Role.SOURCE, Phase.FAILED)),
    ({"type": libvirt.VIR_DOMAIN_JOB_CANCELLED, "operation": OUT}, RUNNING,
     MigrationInfo(Role.SOURCE, Phase.CANCELLED)),
    ({"type": libvirt.VIR_DOMAIN_JOB_COMPLETED, "operation": IN}, RUNNING,
     MigrationInfo(Role.DESTINATION, Phase.COMPLETED)),
    ({"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
      "operation": libvirt.VIR_DOMAIN_JOB_OPERATION_SAVE}, RUNNING, NOT_MIGRATING),
    ({}, PAUSED_MIGRATION, MigrationInfo(Role.DESTINATION, Phase.PENDING)),
    ({"type": "garbage", "operation": "garbage"}, RUNNING, NOT_MIGRATING),
])
def test_migration_of(job: dict[str, object], state: tuple[int, int],
                      expected: MigrationInfo) -> None:
    assert migration_of(job, *state) == expected


@pytest.mark.parametrize(("event", "detail", "moved"), [
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED, True),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY, True),
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED, True),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED, False),
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR, False),
    (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED, False),
    # started/stopped by a migration are VmAppeared/VmGone already (events.py)
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED, False),
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED, False),
])
def test_migration_lifecycle_events(event: int, detail: int, moved: bool) -> None:
    assert (migration_event("vm1", event, detail) == MigrationChanged("vm1")) is moved


@pytest.mark.slow
async def test_migration_query_on_a_real_domain(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    """``jobStats`` + ``state()`` on a real domain: not migrating, paused or running."""
    async with lab_domains(libvirtd.uri, lab_tmp_path, lab_guest) as rig:
        hypervisor = rig.hypervisor
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](256)
        async with anyio.create_task_group() as tg:
            await tg.start(hypervisor.run, send)
            await rig.start("lv-mig", GuestJob(mib=8), start_mib=32, virtual_mib=1024,
                            paused=True)
            with anyio.fail_after(30):
                async for event in receive:
                    if event.vm == "lv-mig" and isinstance(event, VmAppeared):
                        break
            assert await hypervisor.migration("lv-mig") == NOT_MIGRATING
            await hypervisor.resume("lv-mig")
            assert await hypervisor.migration("lv-mig") == NOT_MIGRATING
            tg.cancel_scope.cancel()
