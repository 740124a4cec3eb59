"""Issue 28 item 2 over QMP, no hook: the check at a VM's appearance refreshes a stale view
before the guest runs.

Host A runs a guest that writes 96 MiB into a 64 MiB volume; A's autoextend extends it (local
extender, 16 MiB chunks) at least twice and refreshes A's view. Host B attached its own view
of the volume before the extensions, so B still sees 64 MiB. The guest powers off on A; a
QEMU for it is then started on B with ``-S`` (prelaunch) on B's stale view. The test waits
until B's autoextend has checked and armed the drive, then issues ``cont``; the guest reads
back everything A wrote.

- Check on: B's appearance check sees a guest that has not run on a view smaller than the
  metadata: it refreshes the view and stops that QEMU before it runs (QEMU keeps the length
  it opened the device with, so the refresh cannot reach that process: see
  ``monitor/views.py: ViewSteps._restart``). The test, as the management, starts the guest
  again: this time the view is right, B arms, the guest runs and its read-back verifies;
  ``stale_views{when="appear"}`` is 1 and no guest was paused.
- Negative control, ``Checks(check_views=False)`` on both services: B arms on the 64 MiB
  view and the guest's read-back fails (zeros past B's view's end).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.checks import ALL_ON, Checks
from autoextend.lab.guest import GuestJob, GuestResult, Mode, with_expected_md5
from autoextend.lab.migrate import MigrationLab, service_socket_args, two_local_hosts
from autoextend.lab.qemu import QemuVm, guest_spec, launch
from autoextend.lab.singlehost import LabHost
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev

pytestmark = pytest.mark.slow
MiB = 1 << 20
START_MIB = 64
JOB = GuestJob(mib=96, rate_kib_s=12 * 1024, seed=282)


def drive(host: LabHost, vm: str) -> dict[str, Any]:
    for v in host.service.monitor.snapshot():
        if v["vm"] == vm:
            return dict((v.get("drives") or [{}])[0])
    return {}


def known(host: LabHost, vm: str) -> bool:
    return any(v["vm"] == vm for v in host.service.monitor.snapshot())


async def written_on_a(lab: MigrationLab, name: str) -> tuple[Any, str]:
    """A writes (extending twice or more) while B's view stays attached at the old size.
    Returns the volume and B's device."""
    vm, volume, _ = await lab.start_guest("a", name, JOB, start_mib=START_MIB)
    b_device = await lab.views("b").attach(volume)  # B's view, before any extension
    assert loopdev.size_of(b_device) == START_MIB * MiB
    written = await vm.result(timeout=180)
    assert written.verified and written.written_mib == JOB.mib, written
    await vm.wait_exit(timeout=60)
    await until(lambda: not known(lab.hosts["a"], name), 60, "the guest gone from A")
    metadata = (await anyio.Path(lab.views("a").file_path(volume)).stat()).st_size
    assert metadata >= START_MIB * MiB + 2 * 16 * MiB  # two extensions or more
    assert loopdev.size_of(b_device) == START_MIB * MiB  # B's view is stale
    return volume, b_device


async def started_paused_on_b(lab: MigrationLab, name: str, b_device: str,
                              attempt: int) -> QemuVm:
    job = await anyio.to_thread.run_sync(with_expected_md5, replace(JOB, mode=Mode.VERIFY))
    spec = guest_spec(name, lab.image, [b_device], job, paused=True,
                      extra_args=service_socket_args(name, lab.qmp_dir("b")))
    vm = await launch(spec, lab.directory / "vms" / f"{name}-b{attempt}")
    lab.stack.push_async_callback(vm.stop)
    return vm


async def run_on_b(lab: MigrationLab, name: str) -> tuple[GuestResult, str, int]:
    """Start the guest on B paused, as a management does, and let it run (``cont``) once
    B's autoextend has armed its drive; a QEMU that B's autoextend stops before it runs is
    started again. Returns the guest's result, B's device and how many QEMUs were started."""
    volume, b_device = await written_on_a(lab, name)
    b = lab.hosts["b"]
    for attempt in range(1, 3):
        vm = await started_paused_on_b(lab, f"{name}", b_device, attempt)
        await until(lambda: vm.process.returncode is not None  # noqa: B023 (this attempt's)
                    or drive(b, name).get("state") == "set", 120,
                    "B's autoextend arming the drive or stopping the guest",
                    describe=lambda: drive(b, name))
        if vm.process.returncode is not None:
            print(f"attempt {attempt}: B's autoextend stopped the QEMU before it ran")
            assert "Linux version" not in vm.serial_text()  # it never ran
            await until(lambda: not known(b, name), 60, "the stopped guest gone from B")
            continue
        async with vm.qmp("test") as client:
            status = await client.execute("query-status")
            assert isinstance(status, dict) and status["status"] == "prelaunch", status
            await client.execute("cont")
        return await vm.result(timeout=240), b_device, attempt
    raise AssertionError("B's autoextend stopped the guest twice")


def stale_count(host: LabHost, when: str) -> float:
    value = host.service.metrics.registry.get_sample_value(
        "autoextend_stale_views_total", {"when": when})
    return value or 0.0


async def test_a_stale_view_is_refreshed_at_appearance_before_the_guest_runs(
    lab_tmp_path: Path,
) -> None:
    async with two_local_hosts(lab_tmp_path, names=("a", "b"), chunk_mib=16,
                               poll_interval_s=0.5, checks=ALL_ON) as lab:
        result, b_device, starts = await run_on_b(lab, "appear1")
        b = lab.hosts["b"]
        print(f"guest on B: {result}; B's view {loopdev.size_of(b_device) // MiB} MiB")
        assert starts == 2  # the QEMU that opened the stale view was stopped before it ran
        assert result.verified, result
        assert result.mode is Mode.VERIFY and result.md5 == result.expected_md5
        assert loopdev.size_of(b_device) > START_MIB * MiB
        assert stale_count(b, "appear") == 1
        assert b.service.tally.stale_view_pauses == 0


async def test_negative_control_without_the_check_reads_stale_data(lab_tmp_path: Path) -> None:
    async with two_local_hosts(lab_tmp_path, names=("a", "b"), chunk_mib=16,
                               poll_interval_s=0.5, checks=Checks(check_views=False)) as lab:
        result, b_device, starts = await run_on_b(lab, "appear0")
        print(f"guest on B (check off): {result}")
        assert starts == 1
        assert not result.verified, result
        assert loopdev.size_of(b_device) == START_MIB * MiB
        assert stale_count(lab.hosts["b"], "appear") == 0
