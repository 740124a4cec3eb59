"""Issue 33 item 2 end to end: the SPM's journal of metadata changes on a two-host lab pool
with real guests writing and the SPM role moved once (a step-down). ``journal dump`` lists
every extension the SPMs made, with the term change visible; the count is the sum of the
hosts' successful extensions (``autoextend_extend_requests_total{result="ok"}``); it reads
the same with every host's config, also after the old SPM's process is gone."""

from __future__ import annotations

import json
import sys
import urllib.error
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.guest import GuestJob
from autoextend.lab.multihost import Pool, pool
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow
MiB = 1 << 20
CHUNK = 64 * MiB


def monitor_extensions(the_pool: Pool) -> dict[str, int]:
    """Per volume, how many extensions the hosts' monitors reported."""
    count: dict[str, int] = defaultdict(int)
    for host in the_pool.hosts.values():
        for e in host.log_events():
            if e.get("event") == "extended" and e.get("component") == "monitor":
                count[e["volume"]] += 1
    return count


def spm_changes(the_pool: Pool) -> list[tuple[str, int, int]]:
    """(volume, size, requesting host) of every extension an SPM logged as a change."""
    return sorted((e["volume"], int(e["size"]), int(e["host_id"]))
                  for host in the_pool.hosts.values() for e in host.log_events()
                  if e.get("event") == "volume extended")


async def scrape(the_pool: Pool, host: int) -> dict[str, float]:
    """The host's metrics. A scrape right as the guests' drives go away once answered HTTP
    500 here (a metrics callback iterating state the event loop changed, seen once in four
    runs, not the journal's): ask again, at most three times."""
    for attempt in range(3):
        try:
            return await anyio.to_thread.run_sync(the_pool.hosts[host].scrape)
        except urllib.error.HTTPError as err:
            if err.code != 500 or attempt == 2:
                raise
            await anyio.sleep(0.5)  # time is the subject: let the drives' removal finish
    raise AssertionError("unreachable")


async def dump(the_pool: Pool, host: int, *args: str) -> Any:
    cli = [sys.executable, "-m", "autoextend", "--config", str(the_pool.hosts[host].config),
           "journal", "dump", *args]
    done = await anyio.run_process(cli, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout.decode()


async def test_journal_lists_every_extension_across_a_step_down(lab_tmp_path: Path) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, journal=True) as p:
        old_spm = await p.wait_for_spm()
        g1 = await p.start_guest(1, "vm1", GuestJob(mib=384), start_mib=64, virtual_mib=1024)
        g2 = await p.start_guest(2, "vm2", GuestJob(mib=384, seed=4), start_mib=64,
                                 virtual_mib=1024)
        await until(lambda: min(monitor_extensions(p).get(str(g.volume), 0)
                                for g in (g1, g2)) >= 1, 300,
                    "a first extension of each guest", describe=lambda: monitor_extensions(p))
        cli = [sys.executable, "-m", "autoextend", "--config", str(p.hosts[old_spm].config)]
        moved = await anyio.run_process([*cli, "spm", "step-down"], check=False)
        assert moved.returncode == 0, moved.stderr
        new_spm = await p.wait_for_spm(timeout_s=60, not_host=old_spm)
        results = [await g.vm.result(timeout=900) for g in (g1, g2)]
        assert all(r.verified for r in results), results
        metrics = [await scrape(p, host) for host in sorted(p.hosts)]
        ok = sum(m['autoextend_extend_requests_total{result="ok"}'] for m in metrics)
        status = (await p.hosts[new_spm].status())["spm"]
        assert status["journal"]["failures"] == 0 and status["journal"]["appended"] >= 1

        await p.hosts[old_spm].kill()  # the old SPM's process is gone
        dumps = [await dump(p, host, "--json") for host in sorted(p.hosts)]
        assert all(d["records"] == dumps[0]["records"] for d in dumps)  # same from every host
        records = dumps[0]["records"]
        assert dumps[0]["skipped"] == 0 and dumps[0]["total"] == len(records)
        assert len(records) == ok == sum(monitor_extensions(p).values())
        assert sum(m["autoextend_journal_records_total"] for m in metrics) == len(records)
        assert sum(m["autoextend_journal_write_failures_total"] for m in metrics) == 0
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        # Every extension an SPM made, and nothing else, with who asked for it.
        assert sorted((r["volume"], r["new_size"], r["host"]) for r in records) == spm_changes(p)
        owner = {str(g.volume): g.host_id for g in (g1, g2)}
        for r in records:
            assert r["op"] == "extend" and r["host"] == owner[r["volume"]]
            assert r["new_size"] - r["old_size"] == CHUNK and r["request_id"] > 0
        # The term change: the old SPM's records, then only the new one's, in a later term.
        terms = [(r["lver"], r["spm_host"]) for r in records]
        assert terms == sorted(terms) and len(set(terms)) == 2, terms
        (old_lver, first), (new_lver, second) = sorted(set(terms))
        assert (first, second) == (old_spm, new_spm) and new_lver > old_lver
        times = [r["time_us"] for r in records]
        assert times == sorted(times)

        text = await dump(p, new_spm)
        assert f"lver {old_lver} (host {old_spm}) -> lver {new_lver} (host {new_spm})" in text
        assert "0 torn or garbage slots skipped" in text
        one = await dump(p, new_spm, "--json", "--volume", str(g1.volume), "--since", "1h")
        assert [r["volume"] for r in one["records"]] == [str(g1.volume)] * len(
            [r for r in records if r["volume"] == str(g1.volume)])
        grown = {(row["vg"], row["host"]): row["bytes"] for row in dumps[0]["growth"]}
        assert grown == {("demo", g.host_id): CHUNK * sum(
            1 for r in records if r["volume"] == str(g.volume)) for g in (g1, g2)}


async def test_journal_survives_the_spm_host_being_killed(lab_tmp_path: Path) -> None:
    """The SPM's process is killed mid-run (and stays dead): the other host takes the role
    and goes on after the last valid record. The guests run on the surviving host, so its
    counter is every extension asked for."""
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, journal=True) as p:
        old_spm = await p.wait_for_spm()
        other = 3 - old_spm
        g1 = await p.start_guest(other, "vm1", GuestJob(mib=384), start_mib=64,
                                 virtual_mib=1024)
        await until(lambda: monitor_extensions(p).get(str(g1.volume), 0) >= 2, 300,
                    "two extensions of vm1", describe=lambda: monitor_extensions(p))
        await p.hosts[old_spm].kill()
        assert await p.wait_for_spm(timeout_s=120) == other
        result = await g1.vm.result(timeout=900)
        assert result.verified, result
        metrics = await scrape(p, other)
        ok = metrics['autoextend_extend_requests_total{result="ok"}']
        dumps = [await dump(p, host, "--json") for host in sorted(p.hosts)]
        assert dumps[0]["records"] == dumps[1]["records"] and dumps[0]["skipped"] == 0
        records = dumps[0]["records"]
        assert len(records) == ok == monitor_extensions(p)[str(g1.volume)]
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
        sizes = [r["new_size"] for r in records]
        assert sizes == [64 * MiB + CHUNK * (i + 1) for i in range(len(records))]
        assert all(r["host"] == other for r in records)
        terms = sorted({(r["lver"], r["spm_host"]) for r in records})
        assert [host for _, host in terms] == [old_spm, other], terms
        text = await dump(p, other)
        assert f"(host {old_spm}) -> lver {terms[1][0]} (host {other})" in text
