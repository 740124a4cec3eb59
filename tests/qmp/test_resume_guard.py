"""The QMP backend never sends ``cont`` while a migration out of this host runs (issue 31
finding 3): ``resume`` asks ``query-migrate`` on the same connection first, so it holds also
with QEMU's ``MIGRATION`` events off (or unread). On real QEMU, paused like a guest that ran
out of space, with an outgoing migration held open."""

from __future__ import annotations

import pytest
from qmp_testlab import DriveSpec, Lookup, fast_settings, qemu_lab, running

from autoextend.clock import MonotonicClock
from autoextend.lab.waiting import until
from autoextend.monitor.protocols import MigrationRunning
from autoextend.qmp.hypervisor import QmpHypervisor

pytestmark = pytest.mark.slow


async def test_no_cont_while_a_migration_out_runs_events_off() -> None:
    async with qemu_lab() as lab:
        qemu = await lab.start("vm1", [DriveSpec(await lab.volume(), "vda")])
        hv = QmpHypervisor(fast_settings(lab), Lookup(lab), MonotonicClock())
        async with running(hv):
            await lab.control(qemu, "stop")
            # Held open: 1 KiB/s into a pipe to nowhere; no MIGRATION events (capability off).
            await lab.control(qemu, "migrate-set-parameters", {"max-bandwidth": 1024})
            await lab.control(qemu, "migrate", {"uri": "exec:cat > /dev/null"})
            before, _ = hv.commands_sent("vm1")
            with pytest.raises(MigrationRunning) as refused:
                await hv.resume("vm1")
            assert refused.value.status in ("setup", "active")
            count, recent = hv.commands_sent("vm1")
            commands = [name for kind, name in recent if kind == "command"]
            assert count - before == 1 and commands[-1] == "query-migrate"  # no cont sent
            status = await lab.control(qemu, "query-status")
            assert status["running"] is False, status

            await lab.control(qemu, "migrate_cancel")

            async def cancelled() -> bool:
                reply = await lab.control(qemu, "query-migrate")
                return bool(reply.get("status") == "cancelled")

            await until(cancelled, 10, "the migration cancelled")
            await hv.resume("vm1")  # no migration runs: query-migrate, then cont
            count, recent = hv.commands_sent("vm1")
            commands = [name for kind, name in recent if kind == "command"]
            assert commands[-2:] == ["query-migrate", "cont"]
            status = await lab.control(qemu, "query-status")
            assert status["running"] is True, status
