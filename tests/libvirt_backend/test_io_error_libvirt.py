"""Issue 29 item 2: I/O-error pauses through libvirtd, end to end, with ``[resume]`` policies
``auto``, ``leave`` and ``kill`` (the QMP/blkdebug variant: tests/e2e/test_pauses_qmp.py).

The fault source is :mod:`autoextend.lab.faultfs`: raw images on a FUSE mount, attached as
ordinary ``<disk type='file'>`` with ``error_policy='stop' rerror_policy='stop'``, whose
reads and writes fail with EIO while the test says so. QEMU pauses the domain (libvirt:
PAUSED / IOERROR, ``diskErrors()`` UNSPEC); autoextend's storage probe reads the same file
(through the same mount: the test's libvirtd starts after it, see faultfs's docs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import libvirt
import pytest
from structlog.testing import capture_logs

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.faultfs import fault_fs
from autoextend.lab.guest import GuestJob, find_result, with_expected_md5
from autoextend.lab.guestimage import build_guest
from autoextend.lab.libvirtd import run_libvirtd
from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow
MiB = 1 << 20
JOB = GuestJob(mib=32, rate_kib_s=4096, seed=292)
KILL_AFTER_S = 3.0
RESUME_BOUND_S = 2.0  # issue 29: auto resumes within 2 s of the storage coming back
LEAVE_WINDOW_S = 30.0  # issue 29: leave stays paused for 30 s
NAMES = ("auto", "leave", "kill")
PAUSED_IOERROR = (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)


def io_error_actions(host: LabHost) -> dict[tuple[str, str], float]:
    """autoextend_io_error_actions_total by (action, reason)."""
    return {(s.labels["action"], s.labels["reason"]): s.value
            for m in host.service.metrics.registry.collect() for s in m.samples
            if s.name == "autoextend_io_error_actions_total"}


async def test_io_error_pause_auto_leave_kill_through_libvirt(lab_tmp_path: Path) -> None:
    resume = {"policy": "leave", "backoff_initial_s": 0.5, "overrides": [
        {"vm": "auto", "policy": "auto"},
        {"vm": "kill", "policy": "kill", "kill_after_s": KILL_AFTER_S},
    ]}
    guest = await build_guest()
    job = await anyio.to_thread.run_sync(with_expected_md5, JOB)
    with capture_logs() as logs:
        async with fault_fs(lab_tmp_path / "faultfs") as fs, \
                run_libvirtd(lab_tmp_path / "libvirtd") as daemon:
            extra = {"resume": resume,
                     "libvirt": {"uri": daemon.uri, "reconnect_interval_s": 0.2,
                                 "reconnect_max_s": 1.0, "rescan_interval_s": 1.0}}
            conn = await anyio.to_thread.run_sync(daemon.connect)
            try:
                async with lab_host(workdir=lab_tmp_path / "host", hypervisor="libvirt",
                                    poll_interval_s=0.2, extra=extra) as host:
                    await run_scenario(host, conn, fs, guest, job, lab_tmp_path)
            finally:
                await anyio.to_thread.run_sync(conn.close)
    kills = [e for e in logs if e.get("event") == "killing vm"]
    assert [(k["vm"], k["reason"]) for k in kills] == [
        ("kill", f"paused on I/O error for over {KILL_AFTER_S:g} s")]
    resumed = [e for e in logs if e.get("event") == "vm resumed"]
    assert [e["vm"] for e in resumed] == ["auto"]


async def run_scenario(host: LabHost, conn: Any, fs: Any, guest: Any, job: GuestJob,
                       directory: Path) -> None:
    async def state(name: str) -> tuple[int, int] | None:
        def read() -> tuple[int, int] | None:
            try:
                s = conn.lookupByName(name).state()
            except libvirt.libvirtError:
                return None
            return int(s[0]), int(s[1])
        return await anyio.to_thread.run_sync(read)

    serials: dict[str, Path] = {}
    for name in NAMES:
        image = await anyio.to_thread.run_sync(fs.create, f"{name}.img", 64 * MiB)
        serials[name] = directory / f"{name}.serial"
        xml = guest_domain_xml(name, guest, [str(image)], job, serials[name], files=True,
                               error_policy="stop", rerror_policy="stop")
        await anyio.to_thread.run_sync(conn.createXML, xml, 0)

    def serial(name: str) -> str:
        try:
            return serials[name].read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # The outage begins once each guest has written its first 16 MiB.
    failing = set()

    def fail_started() -> bool:
        for name in NAMES:
            if name not in failing and "written_mib=16" in serial(name):
                fs.fail(f"{name}.img")
                failing.add(name)
        return len(failing) == len(NAMES)

    await until(fail_started, 120, "each guest writing", describe=lambda: sorted(failing))

    async def all_paused() -> bool:
        return all([await state(n) == PAUSED_IOERROR for n in ("auto", "leave")]) and all(
            host.vm_status(n).get("paused") == "io-error" for n in ("auto", "leave"))

    await until(all_paused, 60, "the I/O-error pauses",
                describe=lambda: {n: host.vm_status(n).get("paused") for n in NAMES})

    # kill: the storage stays broken; libvirt destroys the domain after kill_after_s.
    await until(lambda: state("kill"), 1, "kill still there")
    with anyio.fail_after(KILL_AFTER_S + 30):
        while await state("kill") is not None:
            await anyio.sleep(0.1)  # poll libvirt with a deadline
    print("kill: domain destroyed")

    # auto: still paused while its storage fails (the probe reads EIO), resumed once it is
    # back, and the guest's data verifies.
    await anyio.sleep(2.0)  # time is the subject: paused through several probes
    assert await state("auto") == PAUSED_IOERROR
    fs.heal("auto.img")
    fs.heal("leave.img")  # leave's storage is back too: the policy, not the storage, holds it
    back = time.monotonic()

    async def auto_running() -> bool:
        s = await state("auto")
        return s is not None and s[0] == libvirt.VIR_DOMAIN_RUNNING or s is None

    await until(auto_running, 30, "auto resumed", describe=lambda: host.vm_status("auto"))
    resumed_after = time.monotonic() - back
    print(f"auto: running {resumed_after:.2f} s after the storage came back")
    assert resumed_after <= RESUME_BOUND_S
    await until(lambda: find_result(serial("auto")) is not None, 180, "auto's result",
                describe=lambda: serial("auto")[-500:])
    result = find_result(serial("auto"))
    assert result is not None and result.verified and result.written_mib == JOB.mib, result

    # leave: still paused for the window, also with its storage back.
    await anyio.sleep(LEAVE_WINDOW_S - resumed_after)  # the observation window is the subject
    assert await state("leave") == PAUSED_IOERROR
    assert host.vm_status("leave")["paused"] == "io-error"
    assert io_error_actions(host) == {
        ("kill", f"paused on I/O error for over {KILL_AFTER_S:g} s"): 1.0,
        ("resume", "storage probe ok twice in a row"): 1.0,
    }
    await anyio.to_thread.run_sync(lambda: conn.lookupByName("leave").destroy())
