"""make_volume_backend and the [volumes]/[lvm] config sections."""

from __future__ import annotations

import pytest

from autoextend import settings
from autoextend.errors import ConfigError, NotSpmError
from autoextend.lvm.factory import make_volume_backend
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.runner import ProcessRunner
from autoextend.lvm.shell import PerVgShellRunner
from autoextend.volumes import LocalAuthority, VolumeRef


async def test_loop_backend_from_settings(tmp_path: object) -> None:
    config = settings.from_mapping(
        {"volumes": {"backend": "loop", "loop_root": str(tmp_path), "loop_extent_mib": 4}}
    )
    backend = make_volume_backend(config.volumes, config.lvm, LocalAuthority())
    assert isinstance(backend, LoopVolumeBackend)
    assert backend.extent_size == 4 << 20


async def test_lvm_backend_from_settings() -> None:
    config = settings.from_mapping(
        {"lvm": {"pvs": ["/dev/loop7"], "vgs": ["vg0"], "runner": "process", "activation": "off"}}
    )
    spm = make_volume_backend(config.volumes, config.lvm, LocalAuthority())
    host = make_volume_backend(config.volumes, config.lvm, None)
    assert isinstance(spm, LvmVolumeBackend) and isinstance(host, LvmVolumeBackend)
    assert spm.writer is not None and host.writer is None
    assert isinstance(spm.reader._runner, ProcessRunner)
    plain = settings.from_mapping({"lvm": {"pvs": ["/dev/loop7"]}})
    default = make_volume_backend(plain.volumes, plain.lvm, None)
    assert isinstance(default, LvmVolumeBackend)
    assert isinstance(default.reader._runner, PerVgShellRunner)  # a session per VG
    assert spm.lookup("/dev/vg0/lv") == VolumeRef("vg0", "lv")
    assert spm.lookup("/dev/vg1/lv") is None
    with pytest.raises(NotSpmError):
        await host.extend(VolumeRef("vg0", "lv"), 1 << 30)
    await spm.aclose()


def test_lvm_backend_needs_pvs() -> None:
    with pytest.raises(ConfigError, match="lvm.pvs"):
        empty = settings.from_mapping({})
        make_volume_backend(empty.volumes, empty.lvm, None)


@pytest.mark.parametrize(
    "bad",
    [{"pvs": ["sda"]}, {"pvs": ["/dev/a|b"]}, {"vgs": ["-vg"]}, {"runner": "thread"},
     {"activation": "maybe"}, {"command_timeout_s": 0.0}],
)
def test_bad_lvm_settings_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="lvm"):
        settings.from_mapping({"lvm": bad})


def test_shipped_config_file_is_valid() -> None:
    loaded = settings.load("config/autoextend.toml")
    assert loaded.lvm.runner == "shell" and loaded.lvm.use_aio is False
