#!/usr/bin/env python3
"""Generate the Grafana dashboard for autoextend: ``python3 contrib/grafana/dashboard.py``.

Writes ``contrib/grafana/autoextend.json`` next to this file (``--stdout`` prints it instead).
Standard library only. The panel list below is the single source: the dashboard JSON, the
end-to-end test that runs every expression against a real Prometheus (tests/ops) and the PNG
renderer (render_png.py) all read it.

Expressions use fixed 5 m windows rather than Grafana's ``$__rate_interval`` so that they are
plain PromQL (the test sends them to Prometheus's HTTP API as they are).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "autoextend.json"
W = "5m"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    targets: tuple[Target, ...]
    description: str = ""


def _q(quantile: float) -> str:
    return (f"histogram_quantile({quantile}, sum by (phase, le) "
            f"(rate(autoextend_extend_duration_seconds_bucket[{W}])))")


SERVICE_PANELS: tuple[Panel, ...] = (
    Panel("Extension latency by phase, p50", "s", (
        Target(_q(0.5), "{{phase}}"),),
        "From the threshold event to the re-armed threshold (total) and its phases: wait, "
        "extender, request (mailbox round trip), spm_extend, extend, refresh, rearm."),
    Panel("Extension latency by phase, p99", "s", (
        Target(_q(0.99), "{{phase}}"),)),
    Panel("Extensions and failures", "ops", (
        Target(f"sum by (result) (rate(autoextend_extend_requests_total[{W}]))", "{{result}}"),
        Target(f"sum(rate(autoextend_vg_full_total[{W}]))", "VG full"),
        Target(f"sum(rate(autoextend_drives_at_cap_total[{W}]))", "drive at cap"),
        Target("sum(autoextend_extends_in_flight)", "in flight")),
        "Per second. result=failed is retried with backoff; VG full and at cap are refusals."),
    Panel("Pauses and resumes", "short", (
        Target("sum by (reason) (autoextend_vms_paused)", "paused now: {{reason}}"),
        Target(f"sum by (reason) (increase(autoextend_vm_pauses_total[{W}]))",
               "pauses ({{reason}}) /5m"),
        Target(f"sum(increase(autoextend_resumes_total[{W}]))", "automatic resumes /5m")),
        "VMs paused right now and pauses/resumes in the last 5 minutes."),
    Panel("Volume headroom", "bytes", (
        Target("autoextend_volume_physical_bytes - autoextend_volume_allocation_bytes",
               "free in {{volume}}"),
        Target("autoextend_volume_cap_bytes - autoextend_volume_physical_bytes",
               "left to cap: {{volume}}")),
        "Per volume: written space still free, and how far the volume may still grow."),
    Panel("Drive headroom vs extension time", "s", (
        Target("autoextend_drive_headroom_seconds", "headroom {{volume}}"),
        Target('histogram_quantile(0.99, sum by (le) (rate('
               f'autoextend_extend_duration_seconds_bucket{{phase="total"}}[{W}])))',
               "p99 extension time")),
        "Free space above the threshold over the recent write rate: a volume whose headroom "
        "is below the p99 extension time pauses unless the write throttle slows it "
        "(AutoextendHeadroomShort)."),
    Panel("Near misses and the write throttle", "percentunit", (
        Target("histogram_quantile(0.5, sum by (le) (rate("
               f"autoextend_extension_watermark_left_ratio_bucket[{W}])))",
               "watermark left at landing, p50"),
        Target("histogram_quantile(0.01, sum by (le) (rate("
               f"autoextend_extension_watermark_left_ratio_bucket[{W}])))",
               "watermark left at landing, p1"),
        Target(f"sum(rate(autoextend_throttled_seconds_total[{W}]))",
               "drives throttled (drive-seconds/s)"),
        Target(f"sum by (reason) (increase(autoextend_throttles_total[{W}]))",
               "throttles /5m: {{reason}}")),
        "The fraction of the watermark still free when each extension landed (near 0: the "
        "guest almost paused), and the write throttle ([policy] throttle) at work."),
    Panel("Hosts and drives", "short", (
        Target('up{job=~".*autoextend.*"}', "up {{instance}}"),
        Target("autoextend_drives_monitored", "drives {{instance}}")),),
    Panel("SPM and lease health", "s", (
        Target("autoextend_lease_renewal_age_seconds", "renewal age {{instance}}"),
        Target("autoextend_spm_is_spm", "is SPM {{instance}}"),
        Target("sum(autoextend_spm_is_spm)", "SPMs in pool"),
        Target(f"increase(autoextend_lease_bad_records_total[{W}])",
               "bad lease records {{instance}}")),
        "The lease is lost 8 x io_timeout after the last renewal; exactly one SPM is normal."),
    Panel("Mailbox traffic", "ops", (
        Target(f"rate(autoextend_mailbox_requests_sent[{W}])", "sent {{instance}}"),
        Target(f"rate(autoextend_spm_mailbox_messages_received[{W}])",
               "received by SPM {{instance}}"),
        Target("autoextend_spm_mailbox_corrupt_sectors", "corrupt sectors {{instance}}")),
        "Requests per second written by each host and taken up by the SPM (per term)."),
)

# The VG gauges of autoextend/capacity/metrics.py. Every host that watches a VG exports them,
# hence max/min by (vg); committed bytes (and so the over-commit ratio) are each host's view.
POOL_ROW = "Pool capacity"
POOL_PANELS: tuple[Panel, ...] = (
    Panel("VG free vs size", "bytes", (
        Target("max by (vg) (autoextend_vg_size_bytes)", "size {{vg}}"),
        Target("min by (vg) (autoextend_vg_free_bytes)", "free {{vg}}"),
        Target("sum by (vg) (autoextend_vg_committed_bytes)", "committed {{vg}}")),
        "Committed: sum over the hosts of the caps of the volumes each one runs."),
    Panel("VG over-commit ratio", "short", (
        Target("max by (vg) (autoextend_vg_overcommit_ratio)", "largest host view {{vg}}"),
        Target("sum by (vg) (autoextend_vg_committed_bytes) / on (vg) "
               "max by (vg) (autoextend_vg_size_bytes)", "pool {{vg}}")),
        "Committed bytes (caps) over the VG's size; above 1 the VG cannot hold every volume "
        "at its cap."),
    Panel("VG headroom (seconds until full)", "s", (
        Target("min by (vg) (autoextend_vg_headroom_seconds)", "{{vg}}"),),
        "Free bytes over the recent rate of extensions ([capacity] rate_window_s); +Inf while "
        "nothing is used. AutoextendVGFull pages below 10 minutes."),
    Panel("VG level", "short", (
        Target("max by (vg) (autoextend_vg_level)", "{{vg}}"),),
        "0 ok, 1 warning ([capacity] warn_free_percent), 2 critical (critical_free_mib: "
        "only paused VMs get extensions)."),
    Panel("Space given back by reduces", "bytes", (
        Target(f"sum(increase(autoextend_volume_reduced_bytes_total[{W}]))", "bytes /5m"),),
        "Bytes returned to the VGs by volume reduces in the last 5 minutes."),
    Panel("Volume reduces", "short", (
        Target(f"sum(increase(autoextend_volume_reduces_total[{W}]))", "reduces /5m"),),
        "autoextend volume reduce and [policy] reduce_on_stop, in the last 5 minutes."),
)

PANELS: tuple[Panel, ...] = SERVICE_PANELS + POOL_PANELS


def _panel(p: Panel, pid: int, grid: dict[str, int]) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": p.title,
        "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": grid,
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + j), "expr": t.expr, "legendFormat": t.legend,
             "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            for j, t in enumerate(p.targets)
        ],
    }


def dashboard() -> dict[str, Any]:
    panels = [_panel(p, i + 1, {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)})
              for i, p in enumerate(SERVICE_PANELS)]
    y = 8 * ((len(SERVICE_PANELS) + 1) // 2)
    panels.append({"id": len(panels) + 1, "type": "row", "title": POOL_ROW, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    for i, p in enumerate(POOL_PANELS):  # smaller panels, three a line
        panels.append(_panel(p, len(panels) + 1,
                             {"h": 7, "w": 8, "x": 8 * (i % 3), "y": y + 1 + 7 * (i // 3)}))
    return {
        "uid": "autoextend",
        "title": "autoextend",
        "tags": ["autoextend", "storage"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    if "--stdout" in argv:
        sys.stdout.write(render())
    else:
        OUT.write_text(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
