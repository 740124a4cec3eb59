"""Base class for config sections: frozen, strict, unknown keys rejected.

Each component owns its section model next to its code (``monitor/config.py``,
``lease/config.py``, ...); ``settings.py`` composes them into one validated object.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    # TOML has inf and nan; no key means anything by them (nan even passes range checks
    # written as "not above the max"), so they are refused everywhere.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


# TOML arrays arrive as lists; keep them immutable tuples in the model. Items stay strict.
StrTuple = Annotated[tuple[str, ...], Field(strict=False)]
