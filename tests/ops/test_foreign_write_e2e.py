"""A foreign write seen by a real service, end to end (issue 27 item 3): ``autoextend run`` in
local mode on real lvm2 (activation off, loop PVs) audits its VG; another process runs
``lvcreate`` on it. Within a capacity poll the service logs the LV by name, ``status`` shows
it, the counter moves and AutoextendForeignWrite fires on a real Prometheus."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoextend.lvm.lvmconf import render_config
from tests.lvm.support import Pool, pool

from .promserver import free_port, prometheus
from .servicerun import poll, service, status, status_json

__all__ = ["pool"]
pytestmark = pytest.mark.slow


def config(tmp_path: Path, pool: Pool, port: int) -> Path:
    pvs = ", ".join(f'"{d}"' for d in pool.devices)
    cfg = tmp_path / "autoextend.toml"
    cfg.write_text(
        f'[service]\nhypervisor = "qmp"\ncontrol_socket = "{tmp_path}/ctl.sock"\n'
        f'[qmp]\nsocket_glob = "{tmp_path}/qmp/*.sock"\n'
        f'[volumes]\nbackend = "lvm"\n'
        f'[lvm]\npvs = [{pvs}]\nvgs = ["{pool.vg}"]\nactivation = "off"\nrunner = "process"\n'
        f'[metrics]\nenabled = true\nport = {port}\n'
        f"[capacity]\npoll_interval_s = 0.5\n")
    return cfg


async def test_lvcreate_by_another_process_is_seen_named_and_alerted(
        pool: Pool, tmp_path: Path) -> None:
    port = free_port()
    cfg = config(tmp_path, pool, port)
    with service(cfg, tmp_path) as run, prometheus(tmp_path / "prom",
                                                    [f"127.0.0.1:{port}"]) as prom:
        def audited() -> bool:
            st = status_json(cfg)
            return bool(st and st["foreign_writes"] and st["foreign_writes"]["looks"] >= 2)

        await anyio.to_thread.run_sync(poll, audited, 120, "the audit's baseline")
        before = await anyio.to_thread.run_sync(status_json, cfg)
        assert before is not None and before["foreign_writes"]["total"] == 0

        def scraped_zero() -> bool:  # increase() needs a sample from before the write
            return [v["value"][1] for v in prom.query("autoextend_vg_foreign_writes_total")] \
                == ["0"]

        await anyio.to_thread.run_sync(poll, scraped_zero, 60, "Prometheus to scrape 0")
        intruder = await anyio.run_process(
            ["lvm", "lvcreate", "--config", render_config(pool.config), "--driverloaded", "n",
             "--activate", "n", "--zero", "n", "--yes", "--extents", "1", "--name",
             "intruder", pool.vg], check=False)
        assert intruder.returncode == 0, intruder.stderr

        def seen() -> bool:
            st = status_json(cfg)
            return bool(st and st["foreign_writes"]["total"] == 1)

        await anyio.to_thread.run_sync(poll, seen, 60, "the foreign write in status")
        logged = [r for r in run.records() if r.get("event", "").startswith("foreign write")]
        assert len(logged) == 1 and logged[0]["appeared"] == ["intruder"]
        assert logged[0]["vg"] == pool.vg and logged[0]["level"] == "error"
        text = (await anyio.to_thread.run_sync(status, cfg)).stdout
        assert "FOREIGN WRITES: 1" in text and "+intruder" in text

        def firing() -> bool:
            return bool(prom.firing("AutoextendForeignWrite"))

        try:
            await anyio.to_thread.run_sync(poll, firing, 90, "AutoextendForeignWrite to fire")
        except AssertionError as err:
            raise AssertionError(f"{err}; alerts: {prom.alerts()}\n{prom.log()}") from None
        value = prom.query("autoextend_vg_foreign_writes_total")
        assert [float(v["value"][1]) for v in value] == [1.0]
