#!/usr/bin/env python3
"""Render the dashboard's panels to one PNG from a Prometheus's query API (no Grafana needed).

    pip install -r contrib/grafana/requirements.txt     # matplotlib: not a runtime dependency
    python3 contrib/grafana/render_png.py http://127.0.0.1:9090 out.png [--minutes 30]

The panels and expressions are those of dashboard.py (the same as autoextend.json). Grafana is
not packaged for Debian 12, so the operator guide's screenshot is made this way, from the Prometheus
of the end-to-end test (tests/ops/test_prometheus_e2e.py with AUTOEXTEND_DASHBOARD_PNG=path).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
UNIT_SCALE = {"bytes": (1 << 20, "MiB"), "s": (1.0, "s"), "ops": (1.0, "/s"),
              "short": (1.0, "")}


def _panels() -> Any:
    spec = importlib.util.spec_from_file_location("ae_dashboard", HERE / "dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ae_dashboard"] = module  # dataclasses look the module up
    spec.loader.exec_module(module)
    return module.PANELS


def _query_range(url: str, expr: str, start: float, end: float, step: float) -> list[Any]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=30) as response:
        body = json.loads(response.read())
    return list(body["data"]["result"]) if body.get("status") == "success" else []


def _legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def render(url: str, out: Path, *, start: float, end: float, step: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels()
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 3.1 * rows), squeeze=False,
                             layout="constrained")  # leaves room for the suptitle
    fig.suptitle("autoextend (panels of contrib/grafana/autoextend.json, "
                 "rendered from Prometheus with matplotlib)", fontsize=11)
    for ax, panel in zip(axes.flat, panels, strict=False):
        scale, suffix = UNIT_SCALE.get(panel.unit, (1.0, ""))
        for target in panel.targets:
            for series in _query_range(url, target.expr, start, end, step):
                points = [(float(t) - end, float(v)) for t, v in series["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, [y / scale for y in ys], linewidth=1.2,
                        label=_legend(target.legend, series["metric"]))
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(suffix, fontsize=8)
        ax.set_xlabel("seconds before now", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    minutes = float(argv[argv.index("--minutes") + 1]) if "--minutes" in argv else 30.0
    end = time.time()
    render(argv[0], Path(argv[1]), start=end - minutes * 60, end=end,
           step=max(1.0, minutes * 60 / 300))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
