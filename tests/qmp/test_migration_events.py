"""The outgoing-migration check before a refresh (``Hypervisor.outgoing_migration``) over QMP,
on real QEMU: no command while QEMU sends ``MIGRATION`` events and none says a migration
runs; the full probe once one does, or when QEMU sends none (``monitor/migration.py``)."""

from __future__ import annotations

import pytest
from qmp_testlab import DriveSpec, Lookup, fast_settings, qemu_lab, running, wait_for

from autoextend.clock import MonotonicClock
from autoextend.lab.waiting import until
from autoextend.monitor.protocols import MigrationChanged
from autoextend.qmp.hypervisor import QmpHypervisor

pytestmark = pytest.mark.slow

EVENTS_ON = ("-global", "migration.x-events=on")


async def test_no_command_until_a_migration_event_then_the_probe_finds_it() -> None:
    async with qemu_lab() as lab:
        qemu = await lab.start("vm1", [DriveSpec(await lab.volume(), "vda")],
                               extra=EVENTS_ON)
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv) as events:
            before, _ = hv.commands_sent("vm1")
            assert await hv.outgoing_migration("vm1") is False
            assert hv.commands_sent("vm1")[0] == before  # from events: no command

            # An outgoing migration held open (1 KiB/s into a pipe to nowhere).
            await lab.control(qemu, "migrate-set-parameters", {"max-bandwidth": 1024})
            await lab.control(qemu, "migrate", {"uri": "exec:cat > /dev/null"})
            await wait_for(events, lambda e: isinstance(e, MigrationChanged))
            before, _ = hv.commands_sent("vm1")
            assert await hv.outgoing_migration("vm1") is True
            count, recent = hv.commands_sent("vm1")
            commands = tuple(r for r in recent if r[0] == "command")  # events interleave
            assert count - before == 2 and commands[-2:] == (("command", "query-status"),
                                                             ("command", "query-migrate"))

            await lab.control(qemu, "migrate_cancel")
            await wait_for(events, lambda e: isinstance(e, MigrationChanged))
            await until_not_running(hv)
            before, _ = hv.commands_sent("vm1")
            assert await hv.outgoing_migration("vm1") is False
            assert hv.commands_sent("vm1")[0] == before  # "cancelled": no command again


async def until_not_running(hv: QmpHypervisor) -> None:
    """Until the probe says the migration is over: QEMU sent its "cancelled" event before
    that reply, so the reader has read it too (the ordering the check relies on)."""

    async def settled() -> bool:
        return not (await hv.migration("vm1")).running

    await until(settled, 10, "the migration cancelled")


async def test_without_migration_events_every_check_asks() -> None:
    async with qemu_lab() as lab:
        await lab.start("vm1", [DriveSpec(await lab.volume(), "vda")])
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv):
            before, _ = hv.commands_sent("vm1")
            assert await hv.outgoing_migration("vm1") is False
            count, recent = hv.commands_sent("vm1")
            commands = tuple(r for r in recent if r[0] == "command")  # events interleave
            assert count - before == 2 and commands[-2:] == (("command", "query-status"),
                                                             ("command", "query-migrate"))
