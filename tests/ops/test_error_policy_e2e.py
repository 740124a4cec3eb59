"""Issue 29 item 5, done when: lab libvirt domains under the full service (``autoextend run``,
libvirt hypervisor, local mode on loop volumes). A drive with ``error_policy='report'`` is
flagged in ``status`` (``policy=report: ENOSPC reaches the guest``), counted in
``autoextend_drive_error_policy{policy="report"}`` and fires AutoextendDriveErrorPolicyReport
on a real Prometheus; drives with ``stop`` and ``enospace`` are not flagged and counted under
their own policy (libvirt's ``enospace`` is QEMU's ``enospc``).

The domains are started paused (``VIR_DOMAIN_START_PAUSED``): the policy is read from the
live domain XML, so the guest need not run, and three idle TCG guests cost nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import libvirt
import pytest

from autoextend.lab.domxml import guest_domain_xml
from autoextend.lab.guest import GuestJob
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.singlehost import create_qcow2_disk
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.volumes import LocalAuthority, VolumeRef

from .promserver import free_port, prometheus
from .servicerun import poll, service, status, status_json

pytestmark = pytest.mark.slow
MiB = 1 << 20
POLICIES = {"epol-report": "report", "epol-stop": "stop", "epol-enospc": "enospace"}
FLAG = "policy=report: ENOSPC reaches the guest"


def config(tmp_path: Path, uri: str, port: int) -> Path:
    cfg = tmp_path / "autoextend.toml"
    cfg.write_text(
        f'[service]\nhypervisor = "libvirt"\nextender = "local"\n'
        f'control_socket = "{tmp_path}/ctl.sock"\n'
        f'[libvirt]\nuri = "{uri}"\nrescan_interval_s = 1.0\n'
        f'[volumes]\nbackend = "loop"\nloop_root = "{tmp_path}/volumes"\nloop_extent_mib = 4\n'
        f'[policy]\nchunk_mib = 16\npoll_interval_s = 1.0\n'
        f'[metrics]\nenabled = true\naddress = "127.0.0.1"\nport = {port}\n')
    return cfg


@pytest.fixture
async def domains(libvirtd: LabLibvirtd, lab_guest: GuestImage,
                  lab_tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """One paused domain per policy, each on its own thin loop volume; {vm: device}."""
    from contextlib import AsyncExitStack

    backend = LoopVolumeBackend(str(lab_tmp_path / "volumes"), 4 * MiB, LocalAuthority())
    conn = await anyio.to_thread.run_sync(libvirt.open, libvirtd.uri)
    devices: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        stack.push_async_callback(anyio.to_thread.run_sync, conn.close)

        async def destroy(name: str) -> None:
            def run() -> None:
                try:
                    conn.lookupByName(name).destroy()
                except libvirt.libvirtError:
                    pass
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(run)

        for name, policy in POLICIES.items():
            _, device = await create_qcow2_disk(backend, stack, VolumeRef("demo", f"{name}-disk"),
                                                32, 256)
            xml = guest_domain_xml(name, lab_guest, [device], GuestJob(mib=1),
                                   lab_tmp_path / f"{name}.serial", error_policy=policy)
            stack.push_async_callback(destroy, name)
            await anyio.to_thread.run_sync(conn.createXML, xml, libvirt.VIR_DOMAIN_START_PAUSED)
            devices[name] = device
        yield devices


async def test_report_policy_flagged_in_status_metric_and_alert(
        libvirtd: LabLibvirtd, domains: dict[str, str], lab_tmp_path: Path) -> None:
    port = free_port()
    cfg = config(lab_tmp_path, libvirtd.uri, port)
    with service(cfg, lab_tmp_path) as run, prometheus(lab_tmp_path / "prom",
                                                        [f"127.0.0.1:{port}"]) as prom:
        def all_monitored() -> dict[str, list[dict[str, object]]] | None:
            st = status_json(cfg)
            if st is None:
                return None
            found = {v["vm"]: v.get("drives") or [] for v in st["vms"] if v["vm"] in POLICIES}
            return found if len(found) == len(POLICIES) and all(found.values()) else None

        try:
            drives = await anyio.to_thread.run_sync(poll, all_monitored, 120,
                                                    "the three domains' drives in status")
        except AssertionError as err:
            raise AssertionError(f"{err}; log: {run.records()[-20:]}") from None
        assert {vm: [d["error_policy"] for d in ds] for vm, ds in drives.items()} == {
            "epol-report": ["report"], "epol-stop": ["stop"], "epol-enospc": ["enospc"]}

        text = (await anyio.to_thread.run_sync(status, cfg)).stdout
        flagged = [line for line in text.splitlines() if FLAG in line]
        assert len(flagged) == 1, text
        by_vm = text.split("epol-")
        assert any(part.startswith("report") and FLAG in part for part in by_vm), text
        assert not any(FLAG in part for part in by_vm if not part.startswith("report")), text

        warned = [r for r in run.records() if r.get("event", "").startswith(
            "drive's error policy hands ENOSPC to the guest")]
        assert [r["vm"] for r in warned] == ["epol-report"], warned

        def scraped() -> dict[str, float] | None:
            found = {v["metric"]["policy"]: float(v["value"][1])
                     for v in prom.query("autoextend_drive_error_policy")}
            return found if {"report", "stop", "enospc"} <= set(found) else None

        metric = await anyio.to_thread.run_sync(poll, scraped, 60,
                                                "Prometheus to scrape the policy metric")
        assert metric.get("report") == 1.0 and metric.get("stop") == 1.0, metric
        assert metric.get("enospc") == 1.0 and metric.get("ignore", 0.0) == 0.0, metric

        def firing() -> bool:
            return bool(prom.firing("AutoextendDriveErrorPolicyReport"))

        try:
            await anyio.to_thread.run_sync(poll, firing, 90,
                                           "AutoextendDriveErrorPolicyReport to fire")
        except AssertionError as err:
            raise AssertionError(f"{err}; alerts: {prom.alerts()}\n{prom.log()}") from None
        alert = prom.firing("AutoextendDriveErrorPolicyReport")[0]
        assert float(alert["value"]) == 1.0, alert  # the one report drive, not the others
