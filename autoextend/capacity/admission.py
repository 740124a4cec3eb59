"""Pool-wide committed space and admission: pure functions, no I/O.

Derivations:

* **Committed space of a VG.** The sum of the virtual sizes of *every* volume in the VG,
  running or not (the ``autoextend_vg_committed_bytes`` gauge counts only the volumes of
  this host's running VMs). A volume's virtual size comes from its ``autoextend.vsize`` tag
  (``lvm/vsize.py``), or from ``qemu-img info`` of its device or file where it has none; a
  volume for which neither works is **unknown**: counted apart (``unknown``), never guessed,
  never added to ``committed``.
* **Over-commit ratio.** ``committed / size``, ``size`` the VG's size (``vg_size``); for the
  pool, the sums over its VGs.
* **Admission** of a new disk of virtual size ``new``: admitted when
  ``committed + new <= limit``, ``limit = floor(max_ratio * size)``, ``max_ratio`` read as
  the decimal the operator wrote (``Fraction(repr(x))``: 1.1 is 11/10, not the binary
  float just above it), so "exactly at the ratio" admits and one byte more refuses.
  ``room = max(0, limit - committed)`` is the largest disk admitted. With unknown volumes
  the committed figure is only a lower bound: the answer is a refusal unless the caller
  accepts to decide on the known volumes (``allow_unknown``); a refusal on the known
  volumes stands either way (the unknown ones can only add).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Admission", "VgCommitted", "VolumeVsize", "admit", "limit_of", "pool_total",
           "sum_committed"]


@dataclass(frozen=True)
class VolumeVsize:
    """One volume's virtual size: ``vsize`` None when unknown; ``source`` "tag",
    "qemu-img" or "unknown" (``why`` then says why)."""

    lv: str
    vsize: int | None
    source: str
    why: str = ""


@dataclass(frozen=True)
class VgCommitted:
    """One VG's committed space: ``size`` the VG's bytes, ``committed`` the sum of the
    known virtual sizes, ``volumes`` every volume counted, ``unknown`` those of them whose
    virtual size is unknown (not in ``committed``)."""

    vg: str
    size: int
    committed: int
    volumes: int
    unknown: int


def sum_committed(vg: str, size: int, volumes: Sequence[VolumeVsize]) -> VgCommitted:
    known = [v.vsize for v in volumes if v.vsize is not None]
    return VgCommitted(vg, size, sum(known), len(volumes), len(volumes) - len(known))


def pool_total(vgs: Sequence[VgCommitted]) -> VgCommitted:
    """The pool as one VG (its name "*")."""
    return VgCommitted("*", sum(v.size for v in vgs), sum(v.committed for v in vgs),
                       sum(v.volumes for v in vgs), sum(v.unknown for v in vgs))


def limit_of(size: int, max_ratio: float) -> int:
    """The most bytes ``size`` may commit at ``max_ratio`` (see the module docs)."""
    if max_ratio <= 0 or size < 0:
        raise ValueError("max_ratio must be > 0 and size >= 0")
    return int(Fraction(repr(max_ratio)) * size)  # int() of a positive Fraction floors


@dataclass(frozen=True)
class Admission:
    admit: bool
    figures: VgCommitted  # the VG, or the pool (vg "*")
    new: int
    max_ratio: float
    limit: int
    room: int
    reason: str

    @property
    def ratio(self) -> float:
        return self.figures.committed / self.figures.size if self.figures.size else 0.0

    @property
    def ratio_after(self) -> float:
        f = self.figures
        return (f.committed + self.new) / f.size if f.size else 0.0


def admit(figures: VgCommitted, new: int, max_ratio: float, *,
          allow_unknown: bool = False) -> Admission:
    """Whether a new disk of ``new`` bytes keeps ``figures`` at or under ``max_ratio``
    (see the module docs). ValueError for ``new <= 0`` or ``max_ratio <= 0``."""
    if new <= 0:
        raise ValueError("the new disk's size must be > 0")
    limit = limit_of(figures.size, max_ratio)
    room = max(0, limit - figures.committed)
    where = "the pool" if figures.vg == "*" else f"VG {figures.vg}"
    if figures.size <= 0:
        return Admission(False, figures, new, max_ratio, limit, room,
                         f"{where} has no known size")
    if figures.committed + new > limit:
        return Admission(False, figures, new, max_ratio, limit, room,
                         f"{where} would commit more than {max_ratio:g}x its size")
    if figures.unknown and not allow_unknown:
        return Admission(False, figures, new, max_ratio, limit, room,
                         f"{figures.unknown} volume(s) of {where} have an unknown virtual"
                         " size (tag them autoextend.vsize=BYTES, or decide on the known"
                         " ones with --allow-unknown)")
    note = f" ({figures.unknown} volume(s) of unknown size not counted)" \
        if figures.unknown else ""
    return Admission(True, figures, new, max_ratio, limit, room,
                     f"{where} stays at or under {max_ratio:g}x its size{note}")
