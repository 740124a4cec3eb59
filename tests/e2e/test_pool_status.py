"""``autoextend pool status`` (issue 33 item 1) on a three-host lab pool with guests writing:
the SPM host is killed (the SPM moves once). On each surviving host, ``pool status --json``
(a CLI process reading the metadata area, not the service) shows the same hosts, SPM, VG
figures and per-host summaries, checked field by field against each host's own ``status``,
and names the killed host dead within the lease bound."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import tomllib
from typing import Any

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import Pool, pool
from autoextend.lab.sanlockd import unavailable
from autoextend.lab.waiting import until
from autoextend.lease.timeouts import lease_timeouts
from autoextend.spm.config import MailboxSettings, mailbox_base
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.summarypub import LOOK_S, REFILL_S

pytestmark = pytest.mark.slow


async def pool_status(p: Pool, host: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "autoextend", "--config", str(p.hosts[host].config),
           "pool", "status", "--json"]
    done = await anyio.run_process(cmd, check=False)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def by_id(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(h["host_id"]): h for h in report["hosts"]}


def pool_view(report: dict[str, Any]) -> dict[str, Any]:
    """What must read the same from every host: hosts, SPM, VGs, summaries."""
    hosts = {h: (e["name"], e["generation"], e["state"], e.get("engine"), e.get("summary"))
             for h, e in by_id(report).items()}
    # The VG record's seq moves at every publish (5 s): its writer must match, not its seq.
    return {"hosts": hosts, "spm": report["spm"], "vgs": report["vgs"],
            "vg_record": (report["vg_record"] or {}).get("host_id")}


def mismatches(report: dict[str, Any], statuses: dict[int, dict[str, Any]], spm: int,
               dead: int) -> list[str]:
    """Every field of ``report`` that differs from the hosts' own ``status``."""
    found = []
    hosts = by_id(report)
    spm_view = statuses[spm]["spm"]
    if report["spm"] != {"host_id": spm, "lver": spm_view["spm_lver"]}:
        found.append(f"spm {report['spm']} vs the SPM's status lver {spm_view['spm_lver']}")
    for host, st in statuses.items():
        entry = hosts.get(host)
        if entry is None:
            found.append(f"host {host} missing")
            continue
        summary = dict(entry.get("summary") or {})
        summary.pop("paused_total", None)
        summary.pop("paused_cut", None)
        if summary != st["summary"]:
            found.append(f"host {host} summary {summary} vs its status {st['summary']}")
        if entry["state"] != "live" or entry["renewal_age_s"] is None:
            found.append(f"host {host} state {entry['state']}")
        if entry.get("engine") != st["spm"]["engine"] or not entry.get("record_current"):
            found.append(f"host {host} engine {entry.get('engine')} or an old record")
        seen = spm_view["hosts"].get(str(host))
        if seen is None or seen["name"] != entry["name"] or seen["state"] != "live":
            found.append(f"host {host} as the SPM's lease sees it: {seen}")
        mine = {v["vg"]: (v["size"], v["free"], v["level"]) for v in st["capacity"]["vgs"]}
        shown = {v["vg"]: (v["size"], v["free"], v["level"]) for v in report["vgs"]}
        if mine != shown:
            found.append(f"VG figures {shown} vs host {host}'s status {mine}")
    gone = hosts.get(dead)
    if gone is None or gone["state"] != "dead" or spm_view["hosts"].get(
            str(dead), {}).get("state") != "dead":
        found.append(f"host {dead} not dead: {gone}")
    return found


@pytest.mark.timeout(900)  # three hosts, two TCG guests, one paced at 1 MiB/s
async def test_pool_status_from_every_surviving_host(lab_tmp_path: Any) -> None:
    async with pool(3, directory=lab_tmp_path, chunk_mib=64) as p:
        old_spm = await p.wait_for_spm()
        await p.volumes.set_vg_capacity("demo", 8 << 30)  # VG figures for the SPM's record
        writers = [h for h in p.hosts if h != old_spm]
        # One guest writes fast and ends; the other writes at 1 MiB/s and still runs (its
        # drive watched) when the records are compared, with extensions a minute apart.
        fast = await p.start_guest(writers[0], "fast", GuestJob(mib=320, seed=1),
                                   start_mib=64, virtual_mib=1024)
        slow = await p.start_guest(writers[1], "slow",
                                   GuestJob(mib=192, seed=2, rate_kib_s=1024), start_mib=64,
                                   virtual_mib=1024)

        async def extended() -> bool:
            st = await p.statuses()
            return all(int(st[h]["service"]["extends"]) > 0 for h in writers)

        await until(extended, 300, "a first extension on both writing hosts")
        before = await pool_status(p, writers[0])
        assert by_id(before)[old_spm]["state"] == "live"
        assert before["spm"]["host_id"] == old_spm
        old_lver = before["spm"]["lver"]

        await p.hosts[old_spm].kill()
        killed_at = time.monotonic()
        lease = tomllib.loads(p.hosts[old_spm].config.read_text())["lease"]
        t = lease_timeouts(lease["io_timeout_s"], lease["watchdog_fire_timeout_s"])
        # The lease bound: DEAD 8T + W after the last renewal, seen by a renewal read (2T)
        # and a confirming poll (takeover_max_worst also allows for slow I/O); then the
        # survivors' records carry it at their next look (LOOK_S: the peer bucket lets it
        # out even while extensions spend the main one) and pool status watches at most
        # 3T; one main-bucket step (REFILL_S) of slack for the CLI runs on a loaded machine.
        bound = t.takeover_max_worst + LOOK_S + 3 * t.io_timeout + REFILL_S
        named: dict[int, float] = {}

        async def ask(host: int) -> None:
            report = await pool_status(p, host)
            if by_id(report)[old_spm]["state"] == "dead":
                named.setdefault(host, time.monotonic() - killed_at)

        async def named_dead() -> bool:
            async with anyio.create_task_group() as tg:  # both hosts at once
                for host in writers:
                    if host not in named:
                        tg.start_soon(ask, host)
            return len(named) == len(writers)

        await until(named_dead, bound, f"host {old_spm} named dead by pool status on "
                    "every surviving host within the lease bound", describe=lambda: named)
        new_spm = await p.wait_for_spm(timeout_s=120, not_host=old_spm)
        result = await fast.vm.result(timeout=900)
        assert result.verified, result

        # Quiet now: the records settle (each within one budget step) and must agree with
        # every host's own status, and read the same from every host.
        last: dict[str, Any] = {}

        async def agree() -> bool:
            statuses = await p.statuses()
            reports = {h: await pool_status(p, h) for h in writers}
            last["reports"], last["statuses"] = reports, statuses
            last["diff"] = {h: mismatches(r, statuses, new_spm, old_spm)
                            for h, r in reports.items()}
            views = [pool_view(r) for r in reports.values()]
            last["views"] = views
            return not any(last["diff"].values()) and all(v == views[0] for v in views)

        await until(agree, 120, "pool status agreeing with every host's status",
                    describe=lambda: (last.get("diff"), last.get("views")))
        reports = last["reports"]
        report = reports[writers[0]]
        assert report["spm"]["host_id"] == new_spm and report["spm"]["lver"] > old_lver
        assert report["vgs"] and report["vg_record"]["host_id"] == new_spm
        for host in writers:
            summary = by_id(report)[host]["summary"]
            assert summary["drives"] == (host == writers[1])
            assert summary["vms"] == (host == writers[1])
            assert summary["extends_last_hour"] >= 1 and summary["paused"] == {}
            assert summary["last_extend_ms"] is not None and summary["version"]
        dead = by_id(report)[old_spm]
        assert dead["judged_by"] and set(dead["judged_by"]) <= set(writers)
        text = await anyio.run_process(
            [sys.executable, "-m", "autoextend", "--config", str(p.hosts[new_spm].config),
             "pool", "status"], check=False)
        assert text.returncode == 0, text.stderr
        out = text.stdout.decode()
        assert f"SPM: host {new_spm} (term lver {report['spm']['lver']})" in out
        assert "DEAD" in out and "VGs (record of SPM host" in out
        print(f"named dead after {named} s (bound {bound:.1f} s)\n{out}")
        result = await slow.vm.result(timeout=900)
        assert result.verified, result


async def test_pool_status_on_a_fresh_area_with_garbage(lab_tmp_path: Any) -> None:
    """No host joined, one summary sector of garbage: one read, exit 0, the garbage shown as
    unreadable (never a traceback, never a host)."""
    meta = lab_tmp_path / "metadata"
    with open(meta, "wb") as f:
        f.truncate(64 << 20)
    cfg = lab_tmp_path / "autoextend.toml"
    cfg.write_text(f'[lease]\npath = "{meta}"\nhost_id = 1\nmax_hosts = 16\n'
                   "[mailbox]\nmax_hosts = 16\n")
    cli = [sys.executable, "-m", "autoextend", "--config", str(cfg)]
    init = await anyio.run_process([*cli, "lease", "init", "--yes"], check=False)
    assert init.returncode == 0, init.stderr
    layout = MailboxLayout(mailbox_base(MailboxSettings(max_hosts=16)), 512, 16)
    with open(meta, "r+b") as f:
        f.seek(layout.summary_offset(2))
        f.write(b"AXHS" + bytes(range(256)) + bytes(252))
    before = hashlib.sha256(meta.read_bytes()).hexdigest()
    done = await anyio.run_process([*cli, "pool", "status", "--json", "--observe", "0.5"],
                                   check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["hosts"] == [] and report["spm"] == {"host_id": None, "lver": 0}
    assert report["vg_record"] is None and report["unreadable_records"] == [2]
    text = await anyio.run_process([*cli, "pool", "status", "--observe", "0"], check=False)
    assert text.returncode == 0 and not text.stderr, text.stderr
    out = text.stdout.decode()
    assert "SPM: none" in out and "UNREADABLE of host(s) without a lease record: 2" in out
    assert hashlib.sha256(meta.read_bytes()).hexdigest() == before  # it only reads


async def test_pool_status_with_the_sanlock_engine(lab_tmp_path: Any) -> None:
    """The sanlock engine's records (lockspace, resource leader) read the same way: two
    hosts, each with its sanlock daemon; pool status agrees with their own status."""
    reason = unavailable()
    if reason:
        pytest.skip(f"the sanlock daemon cannot run here: {reason}")
    async with pool(2, directory=lab_tmp_path, engine="sanlock") as p:
        spm = await p.wait_for_spm()
        last: dict[str, Any] = {}

        async def agree() -> bool:
            statuses = await p.statuses()
            reports = {h: await pool_status(p, h) for h in p.hosts}
            last["reports"] = reports
            found = []
            for report in reports.values():
                hosts = by_id(report)
                if report["engine"] != "sanlock" or report["spm"] != {
                        "host_id": spm, "lver": statuses[spm]["spm"]["spm_lver"]}:
                    found.append(f"engine or SPM {report['engine']} {report['spm']}")
                for host, st in statuses.items():
                    entry = hosts.get(host, {})
                    summary = dict(entry.get("summary") or {})
                    summary.pop("paused_total", None)
                    summary.pop("paused_cut", None)
                    if entry.get("state") != "live" or entry.get("engine") != "sanlock" \
                            or summary != st["summary"] or not entry.get("record_current"):
                        found.append(f"host {host}: {entry}")
            last["found"] = found
            return not found

        # sanlock renews every 2T (4 s here): the default watch (3T) sees every host renew.
        await until(agree, 120, "pool status agreeing with the sanlock hosts' status",
                    describe=lambda: last.get("found"))
        names = {h["host_id"]: h["name"] for h in last["reports"][spm]["hosts"]}
        assert set(names) == {1, 2} and all(names.values()), names
