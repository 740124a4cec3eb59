"""The committed dashboard JSON is what contrib/grafana/dashboard.py generates, and well formed."""

from __future__ import annotations

import json
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
                   "Pauses and resumes", "SPM and lease health", "Mailbox traffic"):
        assert any(t.startswith(wanted) for t in titles), (wanted, titles)
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert "autoextend" in target["expr"] or target["expr"].startswith("up")
            assert "$__" not in target["expr"]  # plain PromQL: the e2e test runs it as is
