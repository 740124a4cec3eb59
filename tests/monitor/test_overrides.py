"""Per-drive / per-VG policy overrides."""

from __future__ import annotations

import pytest

from autoextend import settings
from autoextend.errors import ConfigError
from autoextend.monitor.overrides import resolve
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import DriveInfo
from autoextend.volumes import VolumeRef

INFO = DriveInfo("vm1", "vda", "n", "/dev/x", 1 << 30, 0, 1 << 28)


def load(text: str) -> settings.Settings:
    import tomllib

    return settings.from_mapping(tomllib.loads(text))


def test_no_override_gives_defaults() -> None:
    pol = resolve(settings.Settings().policy, INFO, VolumeRef("vg", "lv"))
    assert pol.chunk == 2560 * MiB and pol.utilization_percent == 20 and pol.cap_factor == 1.1


def test_vg_then_drive_override_last_wins_per_key() -> None:
    s = load(
        """
[[policy.overrides]]
vg = "gold"
chunk_mib = 512
utilization_percent = 50

[[policy.overrides]]
vm = "vm1"
drive = "vda"
chunk_mib = 1024
"""
    )
    gold = resolve(s.policy, INFO, VolumeRef("gold", "lv"))
    assert gold.chunk == 1024 * MiB and gold.utilization_percent == 50
    other_vm = DriveInfo("vm2", "vda", "n", "/dev/x", 1 << 30, 0, 1 << 28)
    assert resolve(s.policy, other_vm, VolumeRef("gold", "lv")).chunk == 512 * MiB
    assert resolve(s.policy, other_vm, VolumeRef("silver", "lv")).chunk == 2560 * MiB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[policy.overrides]]\nchunk_mib = 5\n", "at least one of vg, lv, vm, drive"),
        ('[[policy.overrides]]\nvg = "a"\n', "must set chunk_mib"),
        ('[[policy.overrides]]\nvg = "a"\nchunk_mib = 0\n', "policy.overrides.0.chunk_mib"),
        ('[[policy.overrides]]\nvg = "a"\ncolour = "red"\n', "policy.overrides.0.colour: unknown key"),
        ("[policy.vg_reserve_mib]\ngold = -1\n", "vg_reserve_mib.gold must be >= 0"),
        ('[policy.vg_reserve_mib]\ngold = "lots"\n', "policy.vg_reserve_mib.gold"),
    ],
)
def test_bad_overrides(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load(text)
