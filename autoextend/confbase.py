"""Base class for config sections: frozen, strict, unknown keys rejected.

Each component owns its section model next to its code (``monitor/config.py``,
``lease/config.py``, ...); ``settings.py`` composes them into one validated object.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    # TOML has inf and nan; no key means anything by them (nan even passes range checks
    # written as "not above the max"), so they are refused everywhere.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


# TOML arrays arrive as lists; keep them immutable tuples in the model. Items stay strict.
StrTuple = Annotated[tuple[str, ...], Field(strict=False)]


def value_text(value: Any) -> str:
    """A setting's value as TOML writes it (``unset`` for None): what the configuration
    reference prints, and what a reload's change lines show."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {value_text(v)}" for k, v in value.items()) + "}"
    return repr(value)
