"""Benchmarks: ``python -m bench.<name>`` writes bench/results/<name>.json.

``AUTOEXTEND_BENCH_RESULTS=DIR`` writes them under DIR instead (the smoke test of every
benchmark, ``tests/ops/test_benches.py``, keeps the recorded figures untouched that way).
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "AUTOEXTEND_BENCH_RESULTS"


def results_file(name: str) -> Path:
    """Where a benchmark writes ``name``: bench/results/, or ``$AUTOEXTEND_BENCH_RESULTS``."""
    folder = os.environ.get(RESULTS_ENV)
    return (Path(folder) if folder else Path(__file__).resolve().parent / "results") / name
