"""Build the configured volume backend (used by the service and the CLI).

``authority`` decides whether this process may write: the SPM passes its SPM term object, a
single-host setup passes :class:`~autoextend.volumes.LocalAuthority`, and a host that
only refreshes and reads passes None (its extends raise NotSpmError).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from autoextend.errors import ConfigError
from autoextend.lvm.config import PVS_MESSAGE
from autoextend.lvm.listing import LoopLister, LvmLister
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig, resolve_activation
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.reserve import FreeSpaceBackend, with_reserves
from autoextend.lvm.runner import LvmRunner, ProcessRunner
from autoextend.lvm.shell import PerVgShellRunner
from autoextend.lvm.writer import LvmWriter, WriterTally
from autoextend.volumes import ListsVolumes, SpmAuthority

if TYPE_CHECKING:
    from autoextend.lvm.config import LvmSettings, VolumeSettings


def make_runner(lvm: LvmSettings) -> LvmRunner:
    if lvm.runner == "shell":
        # A session per VG (at most max_concurrent): VGs extend in parallel (shell.py).
        return PerVgShellRunner(lvm.lvm_binary, lvm.command_timeout_s, use_aio=lvm.use_aio,
                                max_sessions=max(2, lvm.max_concurrent))
    return ProcessRunner(
        lvm.lvm_binary, lvm.command_timeout_s, lvm.max_concurrent, use_aio=lvm.use_aio
    )


def command_config(lvm: LvmSettings) -> LvmCommandConfig:
    return LvmCommandConfig(
        devices=lvm.pvs,
        activation=resolve_activation(lvm.activation),
        wait_for_locks=lvm.wait_for_locks,
        archive=lvm.archive,
    )


def make_volume_backend(
    volumes: VolumeSettings, lvm: LvmSettings, authority: SpmAuthority | None,
    tally: WriterTally | None = None,
) -> LvmVolumeBackend | LoopVolumeBackend:
    """The backend named by ``[volumes] backend``. Call ``aclose()`` when done.

    Raises ConfigError when the lvm backend has no ``lvm.pvs``."""
    if volumes.backend == "loop":
        return LoopVolumeBackend(volumes.loop_root, volumes.loop_extent_mib << 20, authority,
                                 host=volumes.loop_host)
    if not lvm.pvs:
        raise ConfigError("<settings>", [("lvm.pvs", PVS_MESSAGE)])
    runner = make_runner(lvm)
    config = command_config(lvm)
    writer = None if authority is None else LvmWriter(
        runner, config, authority, discard_freed=lvm.discard_freed, tally=tally)
    return LvmVolumeBackend(runner, LvmReader(runner, config), writer, lvm.vgs)


def make_pool_backend(
    volumes: VolumeSettings,
    lvm: LvmSettings,
    authority: SpmAuthority | None,
    *,
    reserves_mib: Mapping[str, int],
    extent_mib: int,
    tally: WriterTally | None = None,
) -> FreeSpaceBackend:
    """:func:`make_volume_backend` guarded by the VG reserves (``[policy] vg_reserve_mib``;
    ``extent_mib`` is ``[policy] extent_mib``, the lvm backend's extent size)."""
    backend = make_volume_backend(volumes, lvm, authority, tally)
    extent = (volumes.loop_extent_mib if volumes.backend == "loop" else extent_mib) << 20
    return with_reserves(backend, reserves_mib, extent)


def make_volume_lister(volumes: VolumeSettings, lvm: LvmSettings) -> ListsVolumes:
    """Every volume of a pool VG, for the SPM's committed-space scan (``listing.py``): on
    lvm with its own read-only lvm2 process per report, as the foreign-write audit has."""
    if volumes.backend == "loop":
        return LoopLister(volumes.loop_root)
    runner = ProcessRunner(lvm.lvm_binary, lvm.command_timeout_s, 1, use_aio=lvm.use_aio)
    return LvmLister(LvmReader(runner, command_config(lvm)))
