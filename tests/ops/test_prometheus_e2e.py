"""The shipped alert rules and dashboard against a real Prometheus scraping a real pool.

Two ``autoextend run`` hosts share a pool (mailbox, SPM lease) and run a real guest on a VG
that only has room for two extensions. Prometheus (Debian's, 127.0.0.1, 1 s scrape and rule
evaluation, data in the test's directory) loads contrib/prometheus/alerts.yml with every
``for:`` shortened to 3 s (tests/ops/promserver.py: the expressions are the shipped ones, only
the durations are rewritten). Then:

- the guest pauses with ENOSPC on the full VG and AutoextendVMPaused fires (and
  AutoextendVGSpaceLow);
- every expression of every panel of contrib/grafana/autoextend.json returns data;
- space is added, the guest resumes and finishes, and AutoextendVMPaused resolves.

Set AUTOEXTEND_DASHBOARD_PNG=path to also render the dashboard's panels to a PNG from this
Prometheus (contrib/grafana/render_png.py; needs matplotlib).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import pool

from .promserver import Prometheus, prom_until, prometheus

pytestmark = pytest.mark.slow
MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "autoextend.json"


def panel_exprs() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def _targets(title: str) -> list[str]:
    return [e for t, e in panel_exprs() if t == title]


async def test_dashboard_and_alerts_against_real_prometheus(lab_tmp_path: Path) -> None:
    (lab_tmp_path / "pool").mkdir()
    async with pool(2, directory=lab_tmp_path / "pool", chunk_mib=64) as p:
        spm = await p.wait_for_spm()
        # Room for the 64 MiB volume plus two 64 MiB extensions, then the VG is full.
        await p.volumes.set_vg_capacity("demo", 192 * MiB)
        targets = [f"127.0.0.1:{h.metrics_port}" for h in p.hosts.values()]
        with prometheus(lab_tmp_path / "prometheus", targets) as prom:
            await prom_until(prom, lambda pr: len([r for r in pr.query("up == 1")]) == 2, 60,
                        "both hosts scraped")
            t0 = time.time()
            host_id = 2 if spm == 1 else 1  # the guest runs on the host that is not SPM
            g = await p.start_guest(host_id, "vm1", GuestJob(mib=256), start_mib=64,
                                    virtual_mib=512)
            firing = await prom_until(prom, lambda pr: pr.firing("AutoextendVMPaused"), 240,
                                 "AutoextendVMPaused to fire")
            (alert,) = firing
            assert alert["labels"]["reason"] == "enospc"
            assert alert["labels"]["instance"] == f"127.0.0.1:{p.hosts[host_id].metrics_port}"
            await prom_until(prom, lambda pr: pr.firing("AutoextendVGSpaceLow"), 60,
                        "AutoextendVGSpaceLow to fire")
            assert not prom.firing("AutoextendNoSPM") and not prom.firing("AutoextendDown")

            # Every panel expression returns data while the pool is in this state.
            empty = []
            for title, expr in panel_exprs():
                result = await anyio.to_thread.run_sync(prom.query, expr)
                if not result:
                    empty.append((title, expr))
            assert not empty, empty
            ok = await anyio.to_thread.run_sync(
                prom.query, 'sum(autoextend_extend_requests_total{result="ok"})')
            assert float(ok[0]["value"][1]) == 2  # 64 -> 128 -> 192 MiB, then full
            p99 = await anyio.to_thread.run_sync(prom.query, panel_exprs()[1][1])
            phases = {r["metric"]["phase"] for r in p99}
            assert {"total", "request", "refresh", "rearm"} <= phases, phases
            # The pool row shows the full VG: level warning or worse, free below size.
            pool_row = {}
            for title in ("VG level", "VG free vs size"):
                for i, expr in enumerate(_targets(title)):
                    result = await anyio.to_thread.run_sync(prom.query, expr)
                    pool_row[title, i] = {r["metric"]["vg"]: float(r["value"][1])
                                          for r in result}
            assert pool_row["VG level", 0]["demo"] >= 1, pool_row
            size, free = pool_row["VG free vs size", 0], pool_row["VG free vs size", 1]
            assert free["demo"] < size["demo"] <= 256 * MiB, pool_row

            await p.volumes.set_vg_capacity("demo", 1024 * MiB)  # space added
            guest_result = await g.vm.result(timeout=300)
            assert guest_result.verified
            await prom_until(prom, lambda pr: not pr.firing("AutoextendVMPaused")
                        and not [a for a in pr.alerts()
                                 if a["labels"]["alertname"] == "AutoextendVMPaused"],
                        120, "AutoextendVMPaused to resolve")
            resumes = await anyio.to_thread.run_sync(
                prom.query, "sum(autoextend_resumes_total)")
            assert float(resumes[0]["value"][1]) >= 1
            png = os.environ.get("AUTOEXTEND_DASHBOARD_PNG")
            if png:
                await anyio.to_thread.run_sync(_render, prom, Path(png), t0)


def _render(prom: Prometheus, out: Path, start: float) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "render_png", ROOT / "contrib" / "grafana" / "render_png.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.render(prom.url, out, start=start - 5, end=time.time(), step=1)
