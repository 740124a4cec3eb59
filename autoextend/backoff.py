"""The one retry backoff: how long to wait after a run of failures (pure).

``failures`` counts consecutive failures so far: none (0) means no wait, the first failure
waits ``initial``, each further one doubles it, up to ``maximum``. Every retry in the service
uses it (a VM check, an extension, a resume of a paused VM, joining the pool), so one
config pair ``*_initial_s``/``*_max_s`` means the same sequence everywhere.
"""

from __future__ import annotations

# 2**62 times any sane initial delay is past every maximum: the exponent stops there.
_MAX_DOUBLINGS = 62


def backoff(failures: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: 0 for none, then
    ``initial``, ``2 * initial``, ``4 * initial`` ... capped at ``maximum``."""
    if failures <= 0:
        return 0.0
    return min(maximum, initial * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))
