"""Load the TOML config file once into a frozen, validated :class:`Settings`.

Every problem is reported with its dotted key (``policy.chunk_mib: must be >= 1``) through
:class:`~autoextend.errors.ConfigError`; the CLI prints it on one line and exits 2.
"""

from __future__ import annotations

import hashlib
import os
import reprlib
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import ValidationError

from autoextend import validation
from autoextend.config import MetricsSettings, ServiceSettings, Settings
from autoextend.errors import ConfigError

__all__ = ["MetricsSettings", "ServiceSettings", "Settings", "dump_toml", "from_mapping", "load",
           "source_name", "with_overrides"]

DEFAULT_CONFIG_PATH = Path("/etc/autoextend/autoextend.toml")
# A config file is a few KiB; anything past this is not one (and /dev/zero never ends).
MAX_CONFIG_BYTES = 1 << 20
# Deeper than any real config (policy.overrides is 3 levels); bounds every walk of the data.
MAX_NESTING = 16
_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 2, 60, 60


def _describe(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else msg
    if "input" in err and kind not in ("model_type", "dict_type"):
        msg += f" (got {_short.repr(err['input'])})"
    return " ".join(msg.split())  # one line, whatever the input held


def _too_deep(data: Any, limit: int) -> bool:
    """True when ``data`` nests lists/tables more than ``limit`` levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def from_mapping(data: dict[str, Any], source: str = "<config>") -> Settings:
    """Validate a parsed TOML mapping: every key's type and range, then the value rules of
    :mod:`autoextend.validation` (NUL bytes, byte lengths, ...). Raises ConfigError naming
    every bad key."""
    if _too_deep(data, MAX_NESTING):
        raise ConfigError(source, [("", f"arrays or tables nested deeper than {MAX_NESTING}")])
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [
            (".".join(str(part) for part in err["loc"]), _describe(dict(err)))
            for err in exc.errors()
        ]
        raise ConfigError(source, problems) from None
    found = validation.value_problems(settings)
    if found:
        raise ConfigError(source, found)
    return settings


def source_name(path: Path | str | None) -> str:
    """How messages name the config: the file, or the defaults when the default file is
    absent (what :func:`load` does)."""
    if path is not None:
        return str(path)
    if DEFAULT_CONFIG_PATH.exists():
        return str(DEFAULT_CONFIG_PATH)
    return f"{DEFAULT_CONFIG_PATH} (absent: built-in defaults)"


def _read_config(file: Path) -> bytes:
    """The file's bytes: a regular file (or a pipe such as /dev/stdin) of at most
    MAX_CONFIG_BYTES. OSError for what the OS refuses, ValueError for what is not a file."""
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("is a directory, not a file")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise ValueError("is not a regular file")
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_CONFIG_BYTES:
                raise ValueError(f"is larger than {MAX_CONFIG_BYTES} bytes: not a config file")
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Loaded:
    """A config file as read: its validated settings, the parsed TOML (which keys the file
    names: the reload guard needs it) and a digest of its bytes (the same file content)."""

    settings: Settings
    raw: dict[str, Any]
    digest: str


def load(path: Path | str | None = None) -> Settings:
    """Read and validate a config file.

    ``path=None`` means the default path; a missing default file gives the built-in defaults,
    but a missing file that was asked for explicitly is an error.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key, bad type or range.
    """
    return load_file(path).settings


def load_file(path: Path | str | None = None) -> Loaded:
    """:func:`load`, keeping the parsed TOML and the digest of the bytes read."""
    explicit = path is not None
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = _read_config(file)
    except FileNotFoundError:
        if not explicit:
            return Loaded(Settings(), {}, hashlib.sha256(b"").hexdigest())
        raise ConfigError(str(file), [("", "file not found")]) from None
    except OSError as exc:
        raise ConfigError(str(file), [("", f"cannot read: {exc.strerror or exc}")]) from None
    except ValueError as exc:
        raise ConfigError(str(file), [("", str(exc))]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(file), [("", "not UTF-8 text")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), [("", f"TOML syntax error: {exc}")]) from None
    except RecursionError:
        raise ConfigError(
            str(file), [("", f"arrays or tables nested deeper than {MAX_NESTING}")]
        ) from None
    return Loaded(from_mapping(data, str(file)), data, hashlib.sha256(raw).hexdigest())


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
