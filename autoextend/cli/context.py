"""What every command gets: the config path and log options from the top-level group."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from autoextend import logs, settings


@dataclass
class CliContext:
    config_path: Path | None
    log_level: str | None
    log_format: str | None

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
        loaded = settings.load(self.config_path)
        merged = dict(overrides)
        for section, values in self.cli_overrides().items():
            merged[section] = {**merged.get(section, {}), **values}
        if merged:
            loaded = settings.with_overrides(loaded, merged)
        logs.configure(loaded.service.log_level, loaded.service.log_format)
        return loaded

    def setup_logs(self) -> None:
        """For commands that need no config file."""
        logs.configure(self.log_level or "info", self.log_format or "auto")  # type: ignore[arg-type]


pass_ctx = click.make_pass_decorator(CliContext)
