"""``autoextend status`` shows a throttled drive on its line (issue 30, item 1)."""

from __future__ import annotations

from autoextend.cli.service import render_status

DRIVE = {"volume": "vg/lv", "state": "extending", "allocation": 1, "physical": 2, "cap": 3,
         "threshold": 0, "last_error": "", "job": "", "job_id": ""}


def test_a_throttled_drive_says_so_on_its_line() -> None:
    text = render_status({"service": {}, "vms": [{"vm": "vm1", "drives": [
        dict(DRIVE, drive="vda", throttle="THROTTLED 12 MiB/s (SPM failover)"),
        dict(DRIVE, drive="vdb", throttle="")]}]})
    (vda,) = [line for line in text.splitlines() if line.strip().startswith("vda ")]
    (vdb,) = [line for line in text.splitlines() if line.strip().startswith("vdb ")]
    assert vda.endswith("THROTTLED 12 MiB/s (SPM failover)")
    assert "THROTTLED" not in vdb
