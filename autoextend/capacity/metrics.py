"""Prometheus gauges of the VGs (labelled ``vg``), read from the watcher at scrape time,
and the counter of space given back by reduces."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from autoextend.capacity.figures import Level, overcommit_ratio
from autoextend.capacity.watch import CapacityWatcher

GAUGES = (
    ("autoextend_vg_size_bytes", "Size of the volume group"),
    ("autoextend_vg_free_bytes", "Free bytes in the volume group"),
    ("autoextend_vg_committed_bytes",
     "Sum of the caps (virtual size x cap factor) of the VG's volumes this host has seen"),
    ("autoextend_vg_overcommit_ratio", "Committed bytes over the volume group's size"),
    ("autoextend_vg_headroom_seconds",
     "Free bytes over the recent rate of consumed bytes (+Inf while nothing is used)"),
    ("autoextend_vg_level", "Space level: 0 ok, 1 warning, 2 critical"),
)
LEVEL_VALUE = {Level.OK: 0.0, Level.WARNING: 1.0, Level.CRITICAL: 2.0}


class CapacityCollector:
    def __init__(self, watcher: CapacityWatcher, reduced: Callable[[], tuple[int, int]]) -> None:
        self.watcher = watcher
        self.reduced = reduced  # (reduces done, bytes given back)

    def collect(self) -> Iterator[Metric]:
        families = {name: GaugeMetricFamily(name, doc, labels=["vg"]) for name, doc in GAUGES}
        for vg, st in sorted(self.watcher.state.items()):
            f = st.figures
            values = (f.size, f.free, st.committed, overcommit_ratio(st.committed, f.size),
                      st.headroom_s, LEVEL_VALUE[st.level])
            for (name, _), value in zip(GAUGES, values, strict=True):
                families[name].add_metric([vg], float(value))
        yield from families.values()
        count, given = self.reduced()
        yield CounterMetricFamily("autoextend_volume_reduces",
                                  "Volumes reduced (space given back)", value=count)
        yield CounterMetricFamily("autoextend_volume_reduced_bytes",
                                  "Bytes given back to the VGs by reduces", value=given)

    def describe(self) -> list[Metric]:
        return []


def register(registry: CollectorRegistry, collector: CapacityCollector) -> None:
    registry.register(collector)
