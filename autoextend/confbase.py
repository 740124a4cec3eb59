"""Base class for config sections: frozen, strict, unknown keys rejected.

Each component owns its section model next to its code (``monitor/config.py``,
``lease/config.py``, ...); ``settings.py`` composes them into one validated object.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
