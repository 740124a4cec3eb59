"""A managed drive whose write error policy hands ENOSPC to the guest (issue 29 item 5):
shown in the drive's status, counted by policy for the metric, warned about once, and left
alone when ``[policy] manage_enospc_to_guest`` is false. Against the in-memory hypervisor."""

from __future__ import annotations

import anyio
import pytest
from structlog.testing import capture_logs

from autoextend.cli.service import render_status
from autoextend.lab.waiting import until
from autoextend.monitor.core import Monitor
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.policy import MiB
from autoextend.volumes import VolumeRef
from tests.monitor.rig import SETTINGS, Rig

VOLS = {name: VolumeRef("vg0", f"lv-{name}") for name in ("vda", "vdb", "vdc")}
POLICIES = {"vda": "report", "vdb": "stop", "vdc": ""}


def add_vm(rig: Rig) -> None:
    rig.hv.add_vm("vm1", {name: (vol, 256 * MiB, 1024 * MiB) for name, vol in VOLS.items()})
    for name, policy in POLICIES.items():
        rig.hv.vms["vm1"].drives[name].error_policy = policy


async def test_reported_counted_and_warned_once() -> None:
    rig = Rig()
    add_vm(rig)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(rig.monitor.run)
            await until(lambda: len(rig.hv.thresholds) == 3, 10, "three drives armed")
            assert rig.monitor.drive_error_policies() == {"report": 1, "stop": 1, "default": 1}
            await rig.advance(5.0)  # polls: the warning is not repeated
            status = {"vms": rig.monitor.snapshot(), "service": {}}
            tg.cancel_scope.cancel()
    warned = [e for e in logs if "hands ENOSPC to the guest" in e["event"]]
    assert [(e["drive"], e["error_policy"]) for e in warned] == [("vda", "report")]
    lines = render_status(status).splitlines()
    flagged = [line for line in lines if "ENOSPC reaches the guest" in line]
    assert len(flagged) == 1 and "vda" in flagged[0] and "policy=report" in flagged[0]


@pytest.mark.parametrize("manage", [True, False])
async def test_the_setting_decides_whether_such_drives_are_managed(manage: bool) -> None:
    rig = Rig()
    settings = SETTINGS.model_copy(update={"manage_enospc_to_guest": manage})
    rig.monitor = Monitor(rig.hv, rig.ext, settings, rig.clock, observer=rig.tally)
    add_vm(rig)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: len(rig.hv.thresholds) == (3 if manage else 2), 10,
                    "the managed drives armed")
        await rig.advance(3.0)
        drives = {d["drive"]: d["state"] for v in rig.monitor.snapshot() for d in v["drives"]}
        tg.cancel_scope.cancel()
    expected = {"vdb": ThresholdState.SET.value, "vdc": ThresholdState.SET.value}
    if manage:
        expected["vda"] = ThresholdState.SET.value
    assert drives == expected
