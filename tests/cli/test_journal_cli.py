"""``autoextend journal dump`` (issue 33 item 2) as a user runs it, on a metadata area file
with records written by the codec: read from the file alone (no service), filtered, as text
and JSON, with torn slots counted; and the clear errors: a bad --since or --volume, an area
too small for the journal (also for ``lease init`` and the cluster agent's start)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import click
import pytest

from autoextend.cli.journal import check_volume, parse_since
from autoextend.clock import MonotonicClock
from autoextend.cluster import ClusterAgent
from autoextend.errors import StartupError
from autoextend.metadata_area import JOURNAL_OFFSET, MIB
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm import journal
from autoextend.spm.config import MailboxSettings
from autoextend.spm.journal import Entry, Op, Record
from tests.cli.clirun import autoextend
from tests.doubles import no_spm_backend
from tests.lease.helpers import settings as lease_settings
from tests.spm.pool import Pool

T0 = 1_800_000_000  # 2027-01-15 08:00 UTC


def _entry(n: int, lver: int, spm: int, lv: str = "vm1-disk") -> Entry:
    return Entry(Op.EXTEND, "demo", lv, (n + 1) * 64 * MIB, (n + 2) * 64 * MIB, lver, spm,
                 host=2, request_id=100 + n, generation=1, time_us=(T0 + 60 * n) * 1_000_000)


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """A 72 MiB metadata area with 4 records (two terms) and one torn slot in its journal."""
    path = tmp_path / "area"
    with path.open("wb") as f:
        f.truncate(72 * MIB)
    records = [Record(1, _entry(0, 3, 1)), Record(2, _entry(1, 3, 1, "vm2-disk")),
               Record(3, _entry(2, 5, 2)), Record(4, _entry(3, 5, 2, "vm2-disk"))]
    fd = os.open(path, os.O_WRONLY)
    try:
        for rec in records:
            os.pwrite(fd, journal.encode(rec), JOURNAL_OFFSET + (rec.seq - 1) * 256)
        os.pwrite(fd, b"\x5a" * 256, JOURNAL_OFFSET + 9 * 256)  # garbage in slot 9
    finally:
        os.close(fd)
    return path


def _config(tmp_path: Path, area: Path) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[lease]\npath = "{area}"\nhost_id = 1\n[mailbox]\njournal = true\n')
    return cfg


def test_dump_lists_the_records_with_the_term_change(tmp_path: Path, area: Path) -> None:
    result = autoextend("--config", str(_config(tmp_path, area)), "journal", "dump")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (f"journal {area} offset {JOURNAL_OFFSET}: 4 records (seq 1..4),"
                        " 1 torn or garbage slots skipped, 4 shown")
    assert "--- SPM term changed: lver 3 (host 1) -> lver 5 (host 2) ---" in result.stdout
    assert any(line.split()[:3] == ["1", "2027-01-15", "08:00:00.000"] for line in lines)
    assert "  demo             host    2:      4 changes, +256 MiB" in lines


def test_dump_filters_by_volume_and_time_as_json(tmp_path: Path, area: Path) -> None:
    cfg = str(_config(tmp_path, area))
    result = autoextend("--config", cfg, "journal", "dump", "--json", "--volume",
                        "demo/vm2-disk", "--since", "2027-01-15T08:01:30")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["seq"] for r in data["records"]] == [4]
    assert data["records"][0] == {
        "seq": 4, "time": "2027-01-15 08:03:00.000000", "time_us": (T0 + 180) * 1_000_000,
        "lver": 5, "spm_host": 2, "host": 2, "request_id": 103, "generation": 1,
        "op": "extend", "volume": "demo/vm2-disk", "old_size": 256 * MIB,
        "new_size": 320 * MIB, "found": False}
    assert data["skipped"] == 1 and data["total"] == 4
    whole_vg = autoextend("--config", cfg, "journal", "dump", "--json", "--volume", "demo")
    assert len(json.loads(whole_vg.stdout)["records"]) == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "yesterday"], "'yesterday' is not a time"),
    (["--volume", "a/b/c"], "'a/b/c' is not VG/LV or VG"),
])
def test_bad_filters_are_one_line_usage_errors(tmp_path: Path, area: Path, args: list[str],
                                               message: str) -> None:
    result = autoextend("--config", str(_config(tmp_path, area)), "journal", "dump", *args)
    assert result.code == 2 and message in result.error


def test_an_area_without_room_for_the_journal_is_a_clear_error(tmp_path: Path) -> None:
    small = tmp_path / "small"
    with small.open("wb") as f:
        f.truncate(16 * MIB)
    cfg = str(_config(tmp_path, small))
    result = autoextend("--config", cfg, "journal", "dump")
    assert result.code == 1
    assert result.error == (f"autoextend: error: no journal on this metadata area: the journal"
                            f" needs bytes {JOURNAL_OFFSET}..{JOURNAL_OFFSET + 25 * MIB} of"
                            f" {small}, which has {16 * MIB} (grow the metadata area to at"
                            " least 69 MiB, or set [mailbox] journal = false)")
    init = autoextend("--config", cfg, "lease", "init", "--max-hosts", "16", "--yes")
    assert init.code == 1 and "grow the metadata area to at least 69 MiB" in init.error
    assert not any(small.read_bytes()[:4 * MIB])  # nothing was formatted


def test_lease_init_clears_the_journal(tmp_path: Path, area: Path) -> None:
    result = autoextend("--config", str(_config(tmp_path, area)), "lease", "init",
                        "--max-hosts", "16", "--yes")
    assert result.code == 0, result.stderr
    assert f"journal cleared: offset {JOURNAL_OFFSET}..{JOURNAL_OFFSET + 25 * MIB}" in (
        result.stdout)
    with area.open("rb") as f:
        f.seek(JOURNAL_OFFSET)
        assert not any(f.read(25 * MIB))


def test_since_and_volume_parsing() -> None:
    assert parse_since("90s", 1000.0) == 910.0 and parse_since("2h", 10_000.0) == 2800.0
    assert parse_since("1700000000", 0.0) == 1_700_000_000.0
    assert parse_since("2027-01-15T08:00:00", 0.0) == T0
    assert parse_since("2027-01-15T09:00:00+01:00", 0.0) == T0
    assert check_volume("vg0/lv1") == ("vg0", "lv1") and check_volume("vg0") == ("vg0", None)
    for bad in ("", "/lv", "vg/", "-vg"):
        with pytest.raises(click.BadParameter):
            check_volume(bad)


async def test_the_agent_refuses_to_start_on_an_area_too_small_for_the_journal() -> None:
    agent = ClusterAgent(lease_settings(1, path="/memory/area"),
                         MailboxSettings(max_hosts=16, journal=True), ("vg0",),
                         Pool().backend, no_spm_backend, MonotonicClock())
    with pytest.raises(StartupError, match="grow the metadata area to at least 69 MiB"):
        with anyio.fail_after(10):
            await agent.run_on(MemoryStorage(16 * MIB, 512))
