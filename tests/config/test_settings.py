"""Config loading: defaults, the shipped file, and one clear message per bad input."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from autoextend import settings
from autoextend.errors import ConfigError
from tests.cli.clirun import autoextend

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "autoextend.toml"


def test_defaults_follow_vdsm() -> None:
    s = settings.Settings()
    assert s.policy.chunk_mib == 2560
    assert s.policy.utilization_percent == 20
    assert s.policy.poll_interval_s == 2.0
    assert s.policy.cap_factor == 1.1


def test_shipped_file_is_valid_and_equals_defaults() -> None:
    assert settings.load(SHIPPED) == settings.Settings()


def test_shipped_file_documents_every_key() -> None:
    text = SHIPPED.read_text()
    data = tomllib.loads(text)
    model = settings.Settings().model_dump()
    for section, values in model.items():
        assert section in data, f"[{section}] missing from config/autoextend.toml"
        for key, value in values.items():
            if value is None:  # "unset" has no TOML form: documented as a commented line
                assert f"# {key} = " in text, f"{section}.{key} not documented"
                continue
            assert key in data[section], f"{section}.{key} missing from config/autoextend.toml"


def test_missing_default_file_gives_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(settings, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert settings.load(None) == settings.Settings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "file not found"),
        ("[policy\nchunk_mib = 1", "TOML syntax error"),
        ("[policy]\nbogus = 1\n", "policy.bogus: unknown key"),
        ("[nosuch]\n", "nosuch: unknown key"),
        ('[policy]\nchunk_mib = "big"\n', "policy.chunk_mib: input should be a valid integer"),
        ("[policy]\nchunk_mib = 0\n", "policy.chunk_mib: input should be greater than or equal to 1"),
        ("[policy]\nutilization_percent = 100\n", "policy.utilization_percent"),
        ('[service]\nhypervisor = "xen"\n', "service.hypervisor: input should be 'qmp' or 'libvirt'"),
        ("[policy]\ncap_factor = 0.5\n", "policy.cap_factor"),
        ("[metrics]\nport = 70000\n", "metrics.port"),
        ("[service]\ndry_run = 1\n", "service.dry_run: input should be a valid boolean"),
    ],
)
def test_bad_input_names_the_key(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "c.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        settings.load(path)
    assert expected in str(info.value)
    # The CLI turns it into one line on stderr and exit code 2, no traceback.
    proc = autoextend("--config", str(path), "config", "check")
    assert proc.code == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_show_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[policy]\nchunk_mib = 128\n")
    proc = autoextend("--config", str(path), "config", "show")
    assert proc.code == 0, proc.stderr
    shown = tomllib.loads(proc.stdout)
    assert shown["policy"]["chunk_mib"] == 128
    assert settings.from_mapping(shown) == settings.load(path)


def test_cli_usage_errors_exit_2() -> None:
    proc = autoextend("--log-level", "loud", "config", "show")
    assert proc.code == 2
    assert "Traceback" not in proc.stderr


def test_version_and_help() -> None:
    for args in (["--version"], ["--help"], ["run", "--help"], ["status", "--help"]):
        proc = autoextend(*args)
        assert proc.code == 0, (args, proc.stderr)
        assert proc.stdout
