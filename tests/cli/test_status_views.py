"""``autoextend status`` names a drive whose guest was paused for a stale view (issue 28)."""

from __future__ import annotations

from autoextend.cli.service import render_status

DRIVE = {"volume": "vg/lv", "state": "set", "allocation": 1, "physical": 2, "cap": 3,
         "threshold": 1, "last_error": "", "job": "", "job_id": ""}


def test_a_stale_view_gets_a_line_under_its_drive() -> None:
    why = "view 268435456 bytes < metadata 536870912 bytes (found at audit)"
    text = render_status({"service": {"stale_views": 2, "stale_view_pauses": 1}, "vms": [
        {"vm": "vm1", "paused": "user", "stale_views": {"vdb": why},
         "drives": [dict(DRIVE, drive="vda"), dict(DRIVE, drive="vdb")]},
        {"vm": "vm2", "drives": [dict(DRIVE, drive="vda")]}]})
    lines = text.splitlines()
    stale = [i for i, line in enumerate(lines) if "STALE VIEW" in line]
    assert len(stale) == 1
    assert lines[stale[0] - 1].strip().startswith("vdb ")  # right under its drive
    assert why in lines[stale[0]] and "never resumed" in lines[stale[0]]
    assert "2 stale views (1 paused)" in text


def test_no_stale_view_no_line() -> None:
    text = render_status({"service": {}, "vms": [
        {"vm": "vm1", "stale_views": {}, "drives": [dict(DRIVE, drive="vda")]}]})
    assert "STALE" not in text and "stale" not in text
