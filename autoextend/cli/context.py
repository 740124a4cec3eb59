"""What every command gets: the config path and log options (given before or after the
subcommand, see :mod:`autoextend.cli.options`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from autoextend import control, logs, settings, validation


@dataclass
class CliContext:
    config_path: Path | None = None
    log_level: str | None = None
    log_format: str | None = None
    effective_log_level: str | None = None  # once a config is loaded: file + command line
    loaded_raw: dict[str, Any] | None = None  # the parsed file of the last load (None: none)

    @property
    def debug(self) -> bool:
        """Tracebacks are printed with errors (``--log-level debug``, or the config's)."""
        return "debug" in (self.log_level, self.effective_log_level)

    @property
    def config_source(self) -> str:
        """How messages name the config in use (the same for ``config check`` and ``run``)."""
        return settings.source_name(self.config_path)

    def cli_overrides(self) -> dict[str, dict[str, Any]]:
        """What the command line says over the config file (kept across reloads)."""
        service: dict[str, Any] = {}
        if self.log_level:
            service["log_level"] = self.log_level
        if self.log_format:
            service["log_format"] = self.log_format
        return {"service": service} if service else {}

    def load_settings(self, **overrides: dict[str, Any]) -> settings.Settings:
        """Load the config file (ConfigError on bad input), apply CLI overrides, set up logs."""
        file = settings.load_file(self.config_path)
        loaded, self.loaded_raw = file.settings, file.raw
        merged = dict(overrides)
        for section, values in self.cli_overrides().items():
            merged[section] = {**merged.get(section, {}), **values}
        if merged:
            loaded = settings.with_overrides(loaded, merged)
        self.effective_log_level = loaded.service.log_level
        logs.configure(loaded.service.log_level, loaded.service.log_format)
        return loaded

    def load_service_settings(self) -> settings.Settings:
        """:meth:`load_settings` plus every rule ``autoextend run`` needs
        (:func:`autoextend.validation.check_service`): ``run`` and ``config check``."""
        loaded = self.load_settings()
        validation.check_service(loaded, self.config_source)
        return loaded

    def setup_logs(self) -> None:
        """For commands that need no config file."""
        logs.configure(self.log_level or "info", self.log_format or "auto")  # type: ignore[arg-type]


pass_ctx = click.make_pass_decorator(CliContext, ensure=True)


def echo_reply(path: str, data: Any, render: Callable[[Any], str], as_json: bool) -> None:
    """Print a control-socket reply: as JSON, or rendered for people. A reply the renderer
    cannot read (another program on the socket, another version) is one line, exit 1."""
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    try:
        text = render(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise control.UnexpectedAnswer(path, f"status of an unknown shape ({exc!r})") from None
    click.echo(text)
