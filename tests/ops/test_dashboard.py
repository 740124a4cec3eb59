"""The committed dashboard JSON is what contrib/grafana/dashboard.py generates, and well formed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "contrib" / "grafana" / "dashboard.py"
JSON = ROOT / "contrib" / "grafana" / "autoextend.json"


def test_committed_json_is_generated() -> None:
    out = subprocess.run([sys.executable, str(GEN), "--stdout"], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout == JSON.read_text(), "run python3 contrib/grafana/dashboard.py"


def test_dashboard_has_the_panels_the_operators_need() -> None:
    board = json.loads(JSON.read_text())
    titles = [p["title"] for p in board["panels"]]
    for wanted in ("Extension latency by phase", "Extensions and failures",
                   "Pauses and resumes", "SPM and lease health", "Mailbox traffic",
                   "VG free vs size", "VG over-commit ratio", "VG headroom", "VG level",
                   "Space given back by reduces", "Volume reduces"):
        assert any(t.startswith(wanted) for t in titles), (wanted, titles)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Pool capacity"]
    # The row heads the VG panels: they all come after it.
    assert titles.index("Pool capacity") < titles.index("VG free vs size")
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert "autoextend" in target["expr"] or target["expr"].startswith("up")
            assert "$__" not in target["expr"]  # plain PromQL: the e2e test runs it as is


def test_pool_panels_read_the_exported_vg_metrics() -> None:
    """Every metric the pool row names is one autoextend/capacity/metrics.py exports."""
    from autoextend.capacity.metrics import GAUGES

    exported = {name for name, _ in GAUGES} | {"autoextend_volume_reduces_total",
                                               "autoextend_volume_reduced_bytes_total"}
    board = json.loads(JSON.read_text())
    row = [p["title"] for p in board["panels"]].index("Pool capacity")
    named = {m for p in board["panels"][row + 1:] for t in p["targets"]
             for m in re.findall(r"autoextend_\w+", t["expr"])}
    assert named and named <= exported, named - exported
    assert {name for name, _ in GAUGES} <= named  # every VG gauge has a panel
