"""The ``[capacity]`` section: VG figures, warning levels, wake on new space, reduce.

``warn_free_percent`` and ``critical_free_mib`` apply to every VG; ``[capacity.vgs.<vg>]``
tables set either of them for one VG. ``mda_warning_percent_free`` and
``mda_critical_percent_free`` are the levels of the VGs' lvm2 metadata areas (``vg_mda_free``
over ``vg_mda_size``), for every VG.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from autoextend.capacity.figures import Levels, MdaLevels, MiB
from autoextend.confbase import Section


class VgLevels(Section):
    # Instead of [capacity]'s value for this VG (at least one of the two).
    warn_free_percent: float | None = Field(None, ge=0.0, lt=100.0)
    critical_free_mib: int | None = Field(None, ge=0, le=1 << 40)

    @model_validator(mode="after")
    def _useful(self) -> VgLevels:
        if self.warn_free_percent is None and self.critical_free_mib is None:
            raise ValueError("set warn_free_percent or critical_free_mib")
        return self


class CapacitySettings(Section):
    enabled: bool = True
    poll_interval_s: float = Field(0.5, gt=0.0, le=3600.0)
    rate_window_s: float = Field(300.0, gt=0.0, le=86400.0)
    warn_free_percent: float = Field(20.0, ge=0.0, lt=100.0)
    critical_free_mib: int = Field(0, ge=0, le=1 << 40)
    vgs: dict[str, VgLevels] = Field(default_factory=dict, strict=False)
    publish_interval_s: float = Field(5.0, gt=0.0, le=3600.0)
    mda_warning_percent_free: float = Field(20.0, ge=0.0, lt=100.0)
    mda_critical_percent_free: float = Field(5.0, ge=0.0, lt=100.0)
    max_overcommit_ratio: float = Field(4.0, gt=0.0, le=1000.0)
    committed_interval_s: float = Field(30.0, ge=1.0, le=86400.0)

    @model_validator(mode="after")
    def _mda_order(self) -> CapacitySettings:
        warn, critical = self.mda_warning_percent_free, self.mda_critical_percent_free
        if warn > 0 and critical > 0 and critical >= warn:
            raise ValueError("mda_critical_percent_free must be below mda_warning_percent_free"
                             f" ({critical:g} >= {warn:g}; 0 turns a level off)")
        return self

    @property
    def mda_levels(self) -> MdaLevels:
        return MdaLevels(self.mda_warning_percent_free, self.mda_critical_percent_free)

    def levels_for(self, vg: str) -> Levels:
        o = self.vgs.get(vg)
        warn = self.warn_free_percent
        critical = self.critical_free_mib
        if o is not None:
            warn = o.warn_free_percent if o.warn_free_percent is not None else warn
            critical = o.critical_free_mib if o.critical_free_mib is not None else critical
        return Levels(warn, critical * MiB)
