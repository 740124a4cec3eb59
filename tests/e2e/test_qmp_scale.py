"""Issue 3: at least 20 VMs monitored at once; one failing VM does not disturb the rest."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow


def armed(host: LabHost) -> set[str]:
    return {
        v["vm"] for v in host.service.monitor.snapshot()
        if v["drives"] and all(d["state"] == "set" and d["threshold"] > 0 for d in v["drives"])
    }


async def test_twenty_vms_and_a_broken_one(lab_tmp_path: Path) -> None:
    async with lab_host(workdir=lab_tmp_path, poll_interval_s=0.5) as host:
        names = [f"idle{i:02d}" for i in range(20)]
        for name in names:
            await host.start_idle(name)
        await until(lambda: armed(host) >= set(names), 60, "20 VMs armed")

        hung = host.guests["idle00"].vm
        hung.send_signal(signal.SIGSTOP)  # a VM whose QMP socket stops answering
        try:
            polls = host.service.monitor.polls
            await until(lambda: host.service.monitor.polls >= polls + 3, 30,
                        "three polls run into the hung VM")
            await host.start_idle("late")  # discovery still works
            await until(lambda: "late" in armed(host), 30, "the late VM armed")

            gone = host.guests["idle01"].vm
            await gone.kill()  # a VM that dies
            await until(
                lambda: "idle01" not in {v["vm"] for v in host.service.monitor.snapshot()},
                30, "the dead VM dropped",
            )
            assert armed(host) >= set(names[2:]) | {"late"}
        finally:
            hung.send_signal(signal.SIGCONT)
