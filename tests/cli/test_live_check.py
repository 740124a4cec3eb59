"""``autoextend config check --live``, run as a user would, on multipath config fixtures."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import anyio
import pytest

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


def test_no_metadata_area_line_without_lvm(tmp_path: Path) -> None:
    """The loop backend (no lvm2 configured): nothing is said of metadata areas."""
    code, out, _ = check(tmp_path, "--multipath-config", str(FIXTURES / "vdsm.conf"), "--json")
    assert code == 0 and json.loads(out)["metadata_areas"] == []
    code, out, _ = check(tmp_path, "--multipath-config", str(FIXTURES / "vdsm.conf"))
    assert code == 0 and "metadata area" not in out


@pytest.mark.slow
async def test_a_small_metadata_area_is_one_warning_line(tmp_path: Path) -> None:
    """Real lvm2 (activation off, a loop PV with a 60 KiB metadata area, which holds 2 LVs
    of 50 segments before 20 % free): silent at 2 LVs, one warn line at 3."""
    from autoextend.lvm.lvmconf import LvmCommandConfig, render_config
    from tests.lvm.support import MiB, make_pv_files, release_under, unique_name

    workdir = tempfile.mkdtemp(prefix="autoextend-livecheck-", dir="/var/tmp")
    try:
        _, devices = await make_pv_files(workdir, 1, 64 * MiB)
        cfg = render_config(LvmCommandConfig(tuple(devices)))
        vg = unique_name()
        for argv in (["pvcreate", "--metadatasize", "32k", "--dataalignment", "64k", "--yes",
                      *devices], ["vgcreate", vg, *devices],
                     *(["lvcreate", "-an", "-Zn", "-L", "4m", "-n", f"lv{i}", vg]
                       for i in range(2))):
            done = await anyio.run_process(["lvm", argv[0], "--config", cfg, *argv[1:]],
                                           check=False)
            assert done.returncode == 0, done.stderr.decode()
        conf = tmp_path / "lvm.toml"
        conf.write_text(f'[volumes]\nbackend = "lvm"\n[lvm]\npvs = ["{devices[0]}"]\n'
                        f'vgs = ["{vg}"]\n')

        def live() -> tuple[int, str]:
            r = autoextend("--config", str(conf), "config", "check", "--live",
                           "--multipath-config", str(FIXTURES / "vdsm.conf"))
            return r.code, r.stdout

        code, out = await anyio.to_thread.run_sync(live)
        assert code == 0 and "metadata area" not in out, out
        done = await anyio.run_process(["lvm", "lvcreate", "--config", cfg, "-an", "-Zn", "-L",
                                        "4m", "-n", "lv2", vg], check=False)
        assert done.returncode == 0, done.stderr.decode()
        code, out = await anyio.to_thread.run_sync(live)
        lines = [line for line in out.splitlines() if "metadata area" in line]
        assert code == 0 and len(lines) == 1, out
        assert lines[0].split()[0] == "warn"
        assert f"VG {vg}: its 0.1 MiB metadata area holds about 2 LVs" in lines[0]
        assert "it has 3" in lines[0] and "--metadatasize 128m" in lines[0]
    finally:
        await release_under(workdir)
        shutil.rmtree(workdir, ignore_errors=True)
