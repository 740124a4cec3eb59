"""Threshold and size policy: pure functions, no I/O, parameters passed in.

Derivation (vdsm's thin provisioning, ../shared/reference/vdsm.md §1):

* A chunk is the unit of growth. ``utilization_percent`` says how much of the last chunk may be
  used before we grow, so the free space we keep ahead of the guest -- the *watermark* -- is
  ``(100 - utilization_percent)`` percent of a chunk (80 % of 2560 MiB = 2048 MiB by default).
* The threshold is armed where the free space left would drop below the watermark:
  ``threshold = physical - watermark`` (at least 1, since QEMU treats 0 as "disarmed").
* The next size adds one chunk and is rounded up to the volume's extent size:
  ``next = round_up(physical + chunk, extent)``.
* A qcow2 image never needs more than its virtual size plus metadata; vdsm bounds that by
  ``capacity * 1.1``. So ``cap = round_up(capacity * cap_factor, extent)`` and
  ``next = min(next, cap)``. We never shrink: ``next >= physical`` always.
* A drive whose physical size has reached the cap is DISABLED: nothing more to do.

The honest cap (issue 30 item 3). ``capacity * 1.1`` is a guess: persistent bitmaps and
leaked clusters can need more (vdsm#371), a large image needs far less. Where the drive's
cluster size is known (``DriveInfo.cluster_size``) and ``qemu-img measure`` answered, the
cap is what a qcow2 of that capacity can ever occupy:

    cap = round_up(fully_allocated + bitmap_bytes + cluster, extent)

* ``fully_allocated``: ``qemu-img measure -O qcow2 -o cluster_size=C --size CAPACITY``'s
  ``fully-allocated`` (header, L1, L2 and refcount structures, and every data cluster);
* ``bitmap_bytes`` (:func:`bitmap_bytes`): the persistent bitmaps as they will be stored,
  recomputed from the drive's bitmaps at every decision (a bitmap added or removed changes
  the cap at once); for each bitmap of granularity ``g``, ``ceil(ceil(capacity / g) / 8)``
  bytes of data in whole clusters, plus its table (8 bytes per data cluster, in whole
  clusters), and one bitmap directory (an entry of ``round_up(24 + len(name), 8)`` bytes
  per bitmap, in whole clusters). The same figure as ``qemu-img measure``'s ``bitmaps``
  for an image holding them (checked against qemu-img in ``tests/monitor/test_cap.py``);
* one cluster of slack (a leaked cluster from an interrupted allocation).

``DrivePolicy.cap_bytes`` carries that cap (0: the factor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from autoextend.backoff import backoff as backoff  # re-exported: callers use policy.backoff

MiB = 1 << 20


@dataclass(frozen=True)
class DrivePolicy:
    """Sizing parameters for one drive, in bytes (already resolved from config overrides)."""

    chunk: int
    utilization_percent: int
    cap_factor: float
    extent: int
    cap_bytes: int = 0  # the measured cap (see the module's docstring); 0: capacity x factor

    def __post_init__(self) -> None:
        if self.chunk <= 0 or self.extent <= 0:
            raise ValueError("chunk and extent must be positive")
        if not 0 <= self.utilization_percent < 100:
            raise ValueError("utilization_percent must be in [0, 100)")
        if self.cap_factor < 1.0:
            raise ValueError("cap_factor must be >= 1.0")


def ceil_div(value: int, step: int) -> int:
    """``ceil(value / step)`` in integers (step > 0)."""
    return -(-value // step)


def round_up(value: int, step: int) -> int:
    """Smallest multiple of ``step`` that is >= ``value`` (value >= 0, step > 0)."""
    return -(-value // step) * step


def watermark(policy: DrivePolicy) -> int:
    """Free bytes to keep ahead of the guest: (100 - utilization)% of a chunk, at least 1."""
    return max(1, (100 - policy.utilization_percent) * policy.chunk // 100)


def threshold(physical: int, policy: DrivePolicy) -> int:
    """Where to arm the write threshold on the protocol node: ``physical - watermark``.

    Always in ``[1, physical)`` for ``physical >= 2``; 1 means "fire on the next write".
    """
    return max(1, physical - watermark(policy))


def needs_extension(allocation: int, physical: int, policy: DrivePolicy) -> bool:
    """True when less than the watermark is free (or writes already ran past the end)."""
    return physical - allocation < watermark(policy)


def bitmap_bytes(capacity: int, cluster: int, bitmaps: tuple[tuple[str, int], ...]) -> int:
    """What a qcow2 of ``capacity`` with ``cluster``-byte clusters stores for its persistent
    ``bitmaps`` (name, granularity): data, tables and the directory, in whole clusters."""
    if not bitmaps:
        return 0
    total = 0
    directory = 0
    for name, granularity in bitmaps:
        bits = ceil_div(capacity, granularity)  # one bit per granularity-sized piece
        clusters = ceil_div(ceil_div(bits, 8), cluster)
        total += clusters * cluster + round_up(clusters * 8, cluster)
        directory += round_up(24 + len(name.encode()), 8)
    return total + round_up(directory, cluster)


def measured_cap(fully_allocated: int, bitmaps: int, cluster: int, extent: int) -> int:
    """The honest cap: a fully allocated image, its bitmaps and one cluster, extent-aligned."""
    return round_up(fully_allocated + bitmaps + cluster, extent)


def cap(capacity: int, policy: DrivePolicy) -> int:
    """The largest size a volume may reach: the measured cap when known, else
    ``round_up(ceil(capacity * cap_factor), extent)``."""
    if policy.cap_bytes > 0:
        return policy.cap_bytes
    # Decimal-free exact ceiling for float factors: math.ceil on the product is exact
    # enough for sizes below 2**53 bytes (8 PiB).
    return round_up(math.ceil(capacity * policy.cap_factor), policy.extent)


def next_size(physical: int, capacity: int, policy: DrivePolicy) -> int:
    """The size to extend to: one chunk more, extent-aligned, capped, never smaller."""
    wanted = round_up(physical + policy.chunk, policy.extent)
    return max(physical, min(wanted, cap(capacity, policy)))


def at_cap(physical: int, capacity: int, policy: DrivePolicy) -> bool:
    """True when no extension can add space (the next size equals the current size)."""
    return next_size(physical, capacity, policy) <= physical
