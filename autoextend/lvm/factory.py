"""Build the configured volume backend (used by the service and the CLI).

``authority`` decides whether this process may write: the SPM passes its SPM term object, a
single-host setup passes :class:`~autoextend.lvm.authority.LocalAuthority`, and a host that
only refreshes and reads passes None (its extends raise NotSpmError).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autoextend.errors import ConfigError
from autoextend.lvm.authority import SpmAuthority
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import LvmCommandConfig, resolve_activation
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.reserve import FreeSpaceBackend, with_reserves
from autoextend.lvm.runner import LvmRunner, ProcessRunner
from autoextend.lvm.shell import LvmShellRunner
from autoextend.lvm.writer import LvmWriter

if TYPE_CHECKING:
    from autoextend.lvm.config import LvmSettings
    from autoextend.settings import Settings


def make_runner(lvm: LvmSettings) -> LvmRunner:
    if lvm.runner == "shell":
        return LvmShellRunner(lvm.lvm_binary, lvm.command_timeout_s, use_aio=lvm.use_aio)
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
    settings: Settings, authority: SpmAuthority | None
) -> LvmVolumeBackend | LoopVolumeBackend:
    """The backend named by ``settings.volumes.backend``. Call ``aclose()`` when done.

    Raises ConfigError when the lvm backend has no ``lvm.pvs``."""
    if settings.volumes.backend == "loop":
        return LoopVolumeBackend(
            settings.volumes.loop_root, settings.volumes.loop_extent_mib << 20, authority,
            host=settings.volumes.loop_host,
        )
    if not settings.lvm.pvs:
        from autoextend.validation import PVS_MESSAGE  # the rule lives there

        raise ConfigError("<settings>", [("lvm.pvs", PVS_MESSAGE)])
    runner = make_runner(settings.lvm)
    config = command_config(settings.lvm)
    writer = None if authority is None else LvmWriter(runner, config, authority)
    return LvmVolumeBackend(runner, LvmReader(runner, config), writer, settings.lvm.vgs)


def make_pool_backend(settings: Settings, authority: SpmAuthority | None) -> FreeSpaceBackend:
    """:func:`make_volume_backend` guarded by the configured VG reserves
    (``[policy] vg_reserve_mib``)."""
    backend = make_volume_backend(settings, authority)
    extent = (settings.volumes.loop_extent_mib if settings.volumes.backend == "loop"
              else settings.policy.extent_mib) << 20
    return with_reserves(backend, settings.policy.vg_reserve_mib, extent)
