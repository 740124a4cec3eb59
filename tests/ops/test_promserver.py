"""The test Prometheus is seen by the lab's leftover check while it runs, and is gone (process
and directory) afterwards, also when the test body fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoextend.lab.leftovers import leftover_processes

from .promserver import fast_rules, prometheus


def test_fast_rules_shorten_every_for() -> None:
    text = "    rules:\n      - alert: A\n        expr: up == 0\n        for: 5m\n"
    assert fast_rules(text) == text.replace("for: 5m", "for: 3s")


@pytest.mark.slow
def test_prometheus_is_tracked_and_cleaned_up_on_failure(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    pid = None
    with pytest.raises(RuntimeError, match="test body failed"):
        with prometheus(directory, []) as prom:
            pid = prom.proc.pid
            found = leftover_processes([str(tmp_path)])
            assert [item.ident for item in found] == [str(pid)]
            assert prom.query("vector(1)")[0]["value"][1] == "1"
            raise RuntimeError("test body failed")
    assert pid is not None
    assert leftover_processes([str(tmp_path)]) == []
    assert not directory.exists()
