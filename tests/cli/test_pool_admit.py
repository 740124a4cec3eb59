"""``autoextend pool admit`` as a user runs it: the answer and its exit code from a record
in a metadata-area file, and every bad input or missing record as one line (exit 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoextend.capacity import committed_record as cr
from autoextend.capacity.admission import VgCommitted

from .clirun import autoextend

GiB = 1 << 30


def area(tmp_path: Path, rec: cr.CommittedRecord | None, raw: bytes | None = None,
         ratio: float = 4.0) -> Path:
    meta = tmp_path / "meta"
    with open(meta, "wb") as f:
        f.truncate(8 << 20)
        f.seek(cr.record_offset(0, 512))
        if rec is not None:
            f.write(cr.encode(rec, 512))
        elif raw is not None:
            f.write(raw)
    conf = tmp_path / "pool.toml"
    conf.write_text(f'[lease]\npath = "{meta}"\nsector_size = 512\n'
                    f"[capacity]\nmax_overcommit_ratio = {ratio}\ncommitted_interval_s = 30\n")
    return conf


def now_ms() -> int:
    return int(time.time() * 1000)


def rec(*vgs: VgCommitted, age_s: float = 0.0) -> cr.CommittedRecord:
    return cr.CommittedRecord(2, 9, now_ms() - int(age_s * 1000), vgs)


GOLD = VgCommitted("gold", 10 * GiB, 30 * GiB, 7, 0)  # 3x of 4x: 10 GiB of room


@pytest.mark.parametrize(("size", "code"), [("10G", 0), ("10239M", 0), (str(10 * GiB + 1), 1),
                                            ("11G", 1)])
def test_at_below_and_above_the_ratio(tmp_path: Path, size: str, code: int) -> None:
    conf = area(tmp_path, rec(GOLD))
    r = autoextend("--config", str(conf), "pool", "admit", "--size", size, "--json")
    assert r.code == code, r.stderr
    out = json.loads(r.stdout)
    assert out["admit"] is (code == 0)
    assert (out["vg"], out["size"], out["committed"], out["limit"], out["room"]) == (
        "gold", 10 * GiB, 30 * GiB, 40 * GiB, 10 * GiB)
    assert out["record"]["spm_host_id"] == 2 and out["record"]["age_s"] < 60


def test_text_answer_and_the_ratio_option(tmp_path: Path) -> None:
    conf = area(tmp_path, rec(GOLD), ratio=3.0)
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G")
    assert r.code == 1 and r.stdout.startswith("refuse: a 1.00 GiB disk in VG gold:")
    assert "committed 30.00 GiB (3.00x) in 7 volume(s)" in r.stdout
    assert "limit 3x = 30.00 GiB; room 0 B" in r.stdout
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G", "--ratio", "3.1")
    assert r.code == 0 and r.stdout.startswith("admit:"), r.stdout


def test_the_pool_sums_its_vgs_and_a_vg_can_be_named(tmp_path: Path) -> None:
    silver = VgCommitted("silver", 10 * GiB, 5 * GiB, 1, 0)
    conf = area(tmp_path, rec(GOLD, silver))
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "45G", "--json")
    out = json.loads(r.stdout)
    assert r.code == 0 and out["vg"] is None and out["committed"] == 35 * GiB
    assert out["room"] == 45 * GiB and len(out["vgs"]) == 2
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "45G", "--vg", "gold")
    assert r.code == 1
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "35G", "--vg", "silver")
    assert r.code == 0
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G", "--vg", "bronze")
    assert r.code == 2 and "VG bronze is not in the SPM's record (VGs: gold, silver)" in r.error


def test_unknown_volumes_refuse_unless_allowed(tmp_path: Path) -> None:
    conf = area(tmp_path, rec(VgCommitted("gold", 10 * GiB, 0, 3, 1)))
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G")
    assert r.code == 1 and "1 volume(s) of VG gold have an unknown virtual size" in r.stdout
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G", "--allow-unknown")
    assert r.code == 0 and "not counted" in r.stdout


@pytest.mark.parametrize(("args", "why"), [
    (["--size", "10X"], "Invalid value for '--size': '10X' is not a size"),
    (["--size", "0"], "must be more than 0"),
    (["--size", "0.3K"], "not a whole number of bytes"),
    (["--size", "-5G"], "is not a size"),
    ([], "Missing option '--size'"),
    (["--size", "1G", "--ratio", "0"], "Invalid value for '--ratio'"),
    (["--size", "1G", "--max-age", "x"], "Invalid value for '--max-age'"),
])
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], why: str) -> None:
    conf = area(tmp_path, rec(GOLD))
    r = autoextend("--config", str(conf), "pool", "admit", *args)
    assert r.code == 2 and r.stdout == ""
    assert r.error.startswith("autoextend: usage error:") and why in r.error, r.error


@pytest.mark.parametrize(("age", "raw", "why"), [
    (None, None, "no SPM has published the pool's committed space yet"),
    (300, None, "s old (over 90 s): no SPM, a stuck one, one of an earlier release"),
    (-300, None, "s in the future (over 90 s): the hosts' clocks disagree"),
    (None, b"\x01" * 512, "the SPM's committed-space record is unusable: bad magic"),
])
def test_no_fresh_record_is_exit_2(tmp_path: Path, age: float | None,
                                   raw: bytes | None, why: str) -> None:
    conf = area(tmp_path, None if age is None else rec(GOLD, age_s=age), raw)
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G")
    assert r.code == 2 and r.stdout == ""
    assert r.error.startswith("autoextend: error:") and why in r.error, r.error


def test_local_mode_and_a_missing_area(tmp_path: Path) -> None:
    conf = tmp_path / "local.toml"
    conf.write_text("[capacity]\nmax_overcommit_ratio = 2.0\n")
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G")
    assert r.code == 2 and "lease.path: no metadata area configured" in r.error
    conf.write_text(f'[lease]\npath = "{tmp_path / "absent"}"\n')
    r = autoextend("--config", str(conf), "pool", "admit", "--size", "1G")
    assert r.code == 1 and "No such file" in r.error
