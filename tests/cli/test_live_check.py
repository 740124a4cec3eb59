"""``autoextend config check --live``, run as a user would, on multipath config fixtures."""

from __future__ import annotations

import json
from pathlib import Path

from .clirun import autoextend

FIXTURES = Path(__file__).parent.parent / "config" / "multipath"
CONFIG = """\
[service]
extender = "mailbox"
[volumes]
backend = "loop"
[lvm]
vgs = ["pool"]
[lease]
path = "/dev/null"
host_id = 1
io_timeout_s = 10
"""


def check(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    cfg = tmp_path / "a.toml"
    cfg.write_text(CONFIG)
    r = autoextend("--config", str(cfg), "config", "check", "--live", *args)
    return r.code, r.stdout, r.stderr


def test_a_safe_config_passes(tmp_path: Path) -> None:
    code, out, err = check(tmp_path, "--multipath-config", str(FIXTURES / "vdsm.conf"))
    assert code == 0, err
    assert "multipath queues 80 s" in out and "RISK" not in out
    assert "SPM crash" in out and "VG full" in out and "array full" in out


def test_the_risky_combination_is_named(tmp_path: Path) -> None:
    code, out, err = check(tmp_path, "--multipath-config", str(FIXTURES / "array-queue.conf"))
    assert code == 1
    risk = [line for line in out.splitlines() if "RISK" in line]
    assert len(risk) == 1 and 'no_path_retry queue (device "3PARdata" "VV")' in risk[0]
    assert err.strip() == ("autoextend: error: 1 failure(s) end in a guest-visible error: "
                           "queueing")


def test_guest_timeout_and_json(tmp_path: Path) -> None:
    code, out, _ = check(tmp_path, "--multipath-config", str(FIXTURES / "vdsm.conf"),
                         "--guest-io-timeout", "30", "--path-loss", "20", "--path-loss", "45",
                         "--json")
    assert code == 1
    report = json.loads(out)
    assert report["multipath_queue_s"] == 80
    by = {o["failure"]: o["level"] for o in report["outcomes"]}
    assert by["path loss 20 s"] == "ok" and by["path loss 45 s"] == "risk"


def test_bad_multipath_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("defaults {\n    no_path_retry banana\n}\n")
    code, out, err = check(tmp_path, "--multipath-config", str(bad))
    assert code == 1 and out == ""
    assert err.strip() == (f"autoextend: error: {bad}: defaults: no_path_retry 'banana' is not "
                           "queue, fail or a count")
    code, _, err = check(tmp_path, "--multipath-config", str(tmp_path / "absent.conf"))
    assert code == 2 and "absent.conf" in err and "Traceback" not in err
