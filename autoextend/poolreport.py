"""``autoextend pool status``: what a reading of the area (``poolview.py``) says (pure).

:func:`combine` turns a :class:`~autoextend.poolview.Reading` into the report (plain data,
the ``--json`` output); :func:`lines` renders it. The liveness rule is in ``poolview.py``'s
module docs.
"""

from __future__ import annotations

from typing import Any

from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import level_of, mda_level_of
from autoextend.capacity.record import VgRecord
from autoextend.hostsummary import as_dict as facts_dict
from autoextend.poolview import Reading, Watch
from autoextend.spm.summary import HostFacts, SummaryRecord

U32 = 0xFFFFFFFF


def _summary(rec: SummaryRecord) -> dict[str, Any]:
    facts = HostFacts(vms=rec.vms, drives=rec.drives, extends_hour=rec.extends_hour,
                      last_extend_ms=rec.last_extend_ms, paused=rec.paused,
                      version=rec.version)
    out = facts_dict(facts)
    out["paused_total"] = rec.paused_total
    out["paused_cut"] = rec.paused_cut
    return out


def _opinions(host: int, w: Watch, witnesses: dict[int, SummaryRecord]
              ) -> dict[int, str]:
    """What each witness's lease says of ``host`` (for its current generation)."""
    out: dict[int, str] = {}
    low = w.slot.generation & U32
    for wid, rec in witnesses.items():
        if wid == host:
            continue
        said = next((p for p in rec.peers if p.host_id == host), None)
        out[wid] = said.state if said is not None and said.generation_low == low else "live"
    return out


def _state(host: int, w: Watch, reading: Reading, witnesses: dict[int, SummaryRecord]
           ) -> tuple[str, list[int]]:
    """(state, the hosts whose lease said it) of one held slot."""
    if w.changed:
        return "live", []
    t = w.slot.io_timeout_s or reading.timeouts.get("io_timeout_s", 10.0)
    dead_after = 8 * t + reading.timeouts.get("watchdog_fire_timeout_s", 60.0)
    if reading.observed_s >= dead_after:
        return "dead", []
    said = _opinions(host, w, witnesses)
    for state in ("dead", "fail"):
        who = sorted(h for h, s in said.items() if s == state)
        if who:
            return state, who
    if reading.observed_s >= 3 * t:
        return "silent", []
    live = sorted(h for h, s in said.items() if s == "live")
    return ("live", live) if live else ("unknown", [])


def _witnesses(reading: Reading) -> dict[int, SummaryRecord]:
    """The summary records whose lease views count: of a held host of that generation,
    seen live by our reads (every such record when no host was seen to change)."""
    current = {h: r for h, r in reading.records.items()
               if isinstance(r, SummaryRecord) and h in reading.watches
               and not reading.watches[h].slot.free
               and r.generation == reading.watches[h].slot.generation}
    seen = {h: r for h, r in current.items() if reading.watches[h].changed}
    return seen or current


def _host(host: int, w: Watch, reading: Reading, witnesses: dict[int, SummaryRecord]
          ) -> dict[str, Any]:
    s = w.slot
    entry: dict[str, Any] = {"host_id": host, "name": s.name, "generation": s.generation}
    if s.error:
        entry |= {"state": "bad", "error": s.error}
    elif s.free:
        entry["state"] = "free"
    else:
        state, by = _state(host, w, reading, witnesses)
        entry["state"] = state
        if by:
            entry["judged_by"] = by
    if w.changed:
        entry["renewal_age_s"] = round(max(0.0, reading.now - w.last_change), 3)
    else:
        entry["renewal_age_s"] = None
        entry["silent_at_least_s"] = round(reading.observed_s, 3)
    rec = reading.records.get(host)
    if isinstance(rec, str):
        entry["record_error"] = rec
    elif rec is not None:
        entry["engine"] = rec.engine
        entry["record_seq"] = rec.seq
        entry["record_age_s"] = round(max(0, reading.wall_us - rec.published_us) / 1e6, 1)
        entry["record_current"] = rec.generation == s.generation
        entry["summary"] = _summary(rec)
    return entry


def combine(reading: Reading, capacity: CapacitySettings) -> dict[str, Any]:
    """The report of one reading (see the module docs)."""
    witnesses = _witnesses(reading)
    hosts = [_host(h, w, reading, witnesses) for h, w in sorted(reading.watches.items())
             if not w.slot.free or h in reading.records]
    leader = reading.leader
    spm: dict[str, Any] = {"host_id": leader.owner, "lver": leader.lver}
    if leader.error:
        spm["error"] = leader.error
    report: dict[str, Any] = {
        "engine": reading.engine, "observed_s": round(reading.observed_s, 3),
        "local_host": reading.local_host, "spm": spm, "hosts": hosts,
        "vgs": [], "vg_record": None,
    }
    vg = reading.vg
    if isinstance(vg, str):
        report["vg_record"] = {"error": vg}
    elif isinstance(vg, VgRecord):
        report["vg_record"] = {"host_id": vg.host_id, "seq": vg.seq}
        for f in vg.figures:
            report["vgs"].append({
                "vg": f.vg, "size": f.size, "free": f.free,
                "level": level_of(f.size, f.free, capacity.levels_for(f.vg)).value,
                "mda_size": f.mda_size, "mda_free": f.mda_free,
                "mda_level": mda_level_of(f.mda_size, f.mda_free, capacity.mda_levels).value,
            })
    others = sorted(h for h, r in reading.records.items()
                    if isinstance(r, str) and h not in reading.watches)
    if others:
        report["unreadable_records"] = others
    return report


def _mib(n: int) -> str:
    value = n / (1 << 20)
    return f"{value / 1024:.1f}GiB" if value >= 1024 else f"{value:.1f}MiB"


def _age(entry: dict[str, Any]) -> str:
    if entry.get("renewal_age_s") is not None:
        return f"<= {entry['renewal_age_s']:.1f} s"
    return f"> {entry.get('silent_at_least_s', 0):.1f} s"


def lines(report: dict[str, Any]) -> list[str]:
    """The report as text: the SPM, one line per host, the VGs, the paused VMs."""
    hosts = report["hosts"]
    counts: dict[str, int] = {}
    for h in hosts:
        counts[h["state"]] = counts.get(h["state"], 0) + 1
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    spm = report["spm"]
    if spm.get("error"):
        who = f"UNREADABLE leader record ({spm['error']})"
    elif spm["host_id"] is None:
        who = f"none (lease free, lver {spm['lver']})"
    else:
        who = f"host {spm['host_id']} (term lver {spm['lver']})"
    out = [f"pool: {len(hosts)} hosts ({tally or 'none'}), lease engine {report['engine']},"
           f" watched {report['observed_s']:.1f} s",
           f"SPM: {who}",
           "hosts:",
           f"  {'id':>4}  {'name':<16} {'state':<8} {'generation':>12} {'renewal':>10}"
           f"  {'engine':<8} {'version':<8} {'VMs':>4} {'drives':>6} {'paused':>6}"
           f" {'ext/h':>6} {'last ext':>9}"]
    for h in hosts:
        state = h["state"].upper() if h["state"] in ("dead", "fail", "bad") else h["state"]
        s = h.get("summary")
        tail = "  (no summary record)"
        if s is not None:
            last = "-" if s["last_extend_ms"] is None else f"{s['last_extend_ms'] / 1000:.3f} s"
            tail = (f"  {h.get('engine', '-'):<8} {s['version']:<8} {s['vms']:>4}"
                    f" {s['drives']:>6} {s['paused_total']:>6} {s['extends_last_hour']:>6}"
                    f" {last:>9}")
            if not h.get("record_current", True):
                tail += "  (record of an earlier run)"
        elif h.get("record_error"):
            tail = f"  (summary record UNREADABLE: {h['record_error']})"
        out.append(f"  {h['host_id']:>4}  {h['name'][:16]:<16} {state:<8}"
                   f" {h['generation']:>12} {_age(h):>10}{tail}")
        if h.get("judged_by"):
            out.append(f"        {h['state']} by the lease of host(s)"
                       f" {', '.join(str(x) for x in h['judged_by'])}")
    rec = report["vg_record"]
    if rec is None:
        out.append("VGs: no SPM has published VG figures yet")
    elif "error" in rec:
        out.append(f"VGs: the SPM's VG record is UNREADABLE ({rec['error']})")
    else:
        out.append(f"VGs (record of SPM host {rec['host_id']}, seq {rec['seq']}):")
        for v in report["vgs"]:
            pct = 100.0 * v["free"] / v["size"] if v["size"] else 0.0
            flag = "" if v["level"] == "ok" else f"{v['level'].upper()}: "
            out.append(f"  {flag}{v['vg']}  size {_mib(v['size'])}  free {_mib(v['free'])}"
                       f" ({pct:.1f}%)  level {v['level']}")
            if v["mda_size"]:
                out.append(f"    metadata area {_mib(v['mda_free'])} free of"
                           f" {_mib(v['mda_size'])}, level {v['mda_level']}")
    if report.get("unreadable_records"):
        out.append("summary records UNREADABLE of host(s) without a lease record: "
                   + ", ".join(str(h) for h in report["unreadable_records"]))
    paused = [(h["host_id"], vm, why) for h in hosts if h.get("summary")
              for vm, why in sorted(h["summary"]["paused"].items())]
    if paused:
        out.append("paused VMs:")
        out.extend(f"  host {host}: {vm} ({why})" for host, vm, why in paused)
    return out
