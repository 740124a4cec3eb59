"""Load the TOML config file once into a frozen, validated :class:`Settings`.

Every problem is reported with its dotted key (``policy.chunk_mib: must be >= 1``) through
:class:`~autoextend.errors.ConfigError`; the CLI prints it on one line and exits 2.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import Field, ValidationError

from autoextend.confbase import Section
from autoextend.errors import ConfigError
from autoextend.lease.config import LeaseSettings
from autoextend.libvirt_backend.config import LibvirtSettings
from autoextend.lvm.config import LvmSettings, VolumeSettings
from autoextend.monitor.config import PolicySettings, ResumeSettings
from autoextend.qmp.config import QmpSettings
from autoextend.spm.config import MailboxSettings

DEFAULT_CONFIG_PATH = Path("/etc/autoextend/autoextend.toml")


class ServiceSettings(Section):
    hypervisor: Literal["qmp", "libvirt"] = "qmp"
    extender: Literal["local", "mailbox"] = "local"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    control_socket: str = "/run/autoextend/control.sock"
    dry_run: bool = False


class MetricsSettings(Section):
    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = Field(9466, ge=1, le=65535)


class Settings(Section):
    service: ServiceSettings = ServiceSettings()
    policy: PolicySettings = PolicySettings()
    resume: ResumeSettings = ResumeSettings()
    qmp: QmpSettings = QmpSettings()
    libvirt: LibvirtSettings = LibvirtSettings()
    volumes: VolumeSettings = VolumeSettings()
    lvm: LvmSettings = LvmSettings()
    lease: LeaseSettings = LeaseSettings()
    mailbox: MailboxSettings = MailboxSettings()
    metrics: MetricsSettings = MetricsSettings()


def _describe(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value"))
    msg = msg[0].lower() + msg[1:] if msg else msg
    if "input" in err and kind not in ("model_type", "dict_type"):
        msg += f" (got {err['input']!r})"
    return msg


def from_mapping(data: dict[str, Any], source: str = "<config>") -> Settings:
    """Validate a parsed TOML mapping. Raises ConfigError naming every bad key."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = [
            (".".join(str(part) for part in err["loc"]), _describe(dict(err)))
            for err in exc.errors()
        ]
        raise ConfigError(source, problems) from None


def load(path: Path | str | None = None) -> Settings:
    """Read and validate a config file.

    ``path=None`` means the default path; a missing default file gives the built-in defaults,
    but a missing file that was asked for explicitly is an error.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key, bad type or range.
    """
    explicit = path is not None
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if not explicit:
            return Settings()
        raise ConfigError(str(file), [("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(str(file), [("", f"cannot read: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(file), [("", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), [("", f"TOML syntax error: {exc}")]) from None
    return from_mapping(data, str(file))


def with_overrides(settings: Settings, overrides: dict[str, dict[str, Any]]) -> Settings:
    """A copy of ``settings`` with some keys replaced, validated like a file."""
    data = settings.model_dump()
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    return from_mapping(data, "<command line>")


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def dump_toml(settings: Settings) -> str:
    """The effective configuration as TOML (for ``autoextend config show``). Keys whose
    value is unset (None) are left out, as TOML has no null."""
    return tomli_w.dumps(_drop_none(settings.model_dump(mode="json")))
