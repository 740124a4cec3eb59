"""The live sweep's cadence against idle CPU, idle reads and cold latency: the formula the
``[mailbox]`` defaults come from (pure; ``spm/README.md``, "Cadence, reads and CPU").

With ``T`` the live sweep's cadence (``live_poll_interval_s``), ``T_s`` the sweep's, ``c``
the CPU of one ring peeker read (a timer wake-up and an I/O wake-up of its thread), ``B``
the server's own idle CPU share (the live set asked once a second, its fallback reads every
10 s, a batch of the box scan every 10 s) and ``t`` the time from noticing a ring to the
host holding the reply (p99):

- idle CPU share  ``C(T) = c * W(T) + B``, ``W(T) = 1/T`` (+ ``1/T_s`` when the sweep cannot
  wait for a live-sweep read, i.e. when ``T > DEFER_FRACTION * T_s``);
- cold p99        ``P(T) = 0.99 * T + t`` (a ring lands at a uniform moment of the cadence);
- so ``C(T) <= C_max`` and ``P(T) <= P_max`` hold for ``T`` in
  ``[c / (C_max - B), (P_max - t) / 0.99]``, which is empty when ``c > (C_max - B) *
  (P_max - t) / 0.99``: a faster disk wake or a slower sweep cannot help then, only a
  cheaper read.

Reads are separate (``watch.idle_ring_read_rate``): the live sweep reads ``L * S / T`` for
``L`` live hosts of ``S``-byte sectors until it reaches ``live_sweep_bytes_per_s``, so ``T``
holds for up to ``live_sweep_bytes_per_s * T / S`` live hosts; beyond, the cadence (and
the cold latency) grows with ``L``.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoextend.spm.peek import DEFER_FRACTION


@dataclass(frozen=True)
class CostModel:
    """Measured on the 2-core development VM (``bench/spmidle_bench.py``, issue 32)."""

    read_cpu_s: float = 0.135e-3  # one peeker read: timer wake + 512 B-1 KiB O_DIRECT read
    base_cpu_share: float = 0.0007  # the server's own idle wake-ups (0.07 % of a core)
    serve_p99_s: float = 0.012  # ring noticed -> host holds the reply, p99, quiet machine


def wakes_per_s(live_interval_s: float, sweep_interval_s: float) -> float:
    """The peeker's wake-ups per second: one per live sweep; the sweep shares them when
    it may wait that long for one (``peek.plan_wake``), else adds its own."""
    wakes = 1.0 / live_interval_s
    if live_interval_s > DEFER_FRACTION * sweep_interval_s:
        wakes += 1.0 / sweep_interval_s
    return wakes


def idle_cpu_share(model: CostModel, live_interval_s: float, sweep_interval_s: float) -> float:
    """``C(T)``: the idle SPM's CPU, as a share of one core."""
    return model.read_cpu_s * wakes_per_s(live_interval_s, sweep_interval_s) \
        + model.base_cpu_share


def cold_p99_s(model: CostModel, live_interval_s: float) -> float:
    """``P(T)``: a quiet live host's first reply, p99."""
    return 0.99 * live_interval_s + model.serve_p99_s


def live_interval_window(model: CostModel, cpu_cap: float, p99_cap_s: float
                         ) -> tuple[float, float] | None:
    """The cadences ``T`` that keep ``C(T) <= cpu_cap`` and ``P(T) <= p99_cap_s`` when the
    sweep shares the peeker's wake-ups; None when there is none."""
    if cpu_cap <= model.base_cpu_share or p99_cap_s <= model.serve_p99_s:
        return None
    low = model.read_cpu_s / (cpu_cap - model.base_cpu_share)
    high = (p99_cap_s - model.serve_p99_s) / 0.99
    return (low, high) if low <= high else None
