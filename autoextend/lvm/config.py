"""The ``[volumes]`` and ``[lvm]`` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from autoextend.confbase import Section, StrTuple


class VolumeSettings(Section):
    backend: Literal["lvm", "loop"] = "lvm"
    loop_root: str = "/var/lib/autoextend/volumes"


class LvmSettings(Section):
    lvm_binary: str = "lvm"
    pvs: StrTuple = ()
    vgs: StrTuple = ()
    command_timeout_s: float = Field(30.0, gt=0.0, le=3600.0)
    max_concurrent: int = Field(10, ge=1, le=100)
