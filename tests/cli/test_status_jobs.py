"""``autoextend status`` shows a job target with its job's kind next to the drive."""

from __future__ import annotations

from autoextend.cli.service import render_status

DRIVE = {"volume": "vg/base", "state": "set", "allocation": 1, "physical": 2, "cap": 3,
         "threshold": 1, "last_error": ""}


def test_job_target_shows_the_job_kind() -> None:
    text = render_status({"service": {}, "vms": [{"vm": "vm1", "drives": [
        dict(DRIVE, drive="vda", job="", job_id=""),
        dict(DRIVE, drive="vda#c1", job="commit", job_id="c1")]}]})
    lines = text.splitlines()
    assert any(line.strip().startswith("vda#c1 (commit target)") for line in lines)
    assert any(line.strip().startswith("vda ") for line in lines)
    assert "target" not in next(line for line in lines if line.strip().startswith("vda "))
