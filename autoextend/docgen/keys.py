"""Every config key as data: name, type, default, range and description.

Descriptions, first found wins: the field's own ``description``; the comment block above the key
in the documented default file (``config/autoextend.toml``: operator words, one block may cover
the keys right below it); the comment above the field in its model's source; a bullet
``- ``key`` ...`` in its module's docstring. A blank line after a section's first comments in
the TOML file makes them the section's introduction.
"""

from __future__ import annotations

import inspect
import re
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from autoextend.confbase import value_text
from autoextend.config import Settings

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "config" / "autoextend.toml"

_KEY_LINE = re.compile(r"^(#\s)?([a-z_][a-z0-9_]*)\s*=")
_FIELD_LINE = re.compile(r"^(\s+)([a-z_][a-z0-9_]*)\s*:")
_SECTION_LINE = re.compile(r"^\[([a-z_.]+)\]\s*$")


@dataclass(frozen=True)
class Key:
    name: str  # dotted from the top: policy.chunk_mib
    type: str
    default: str
    range: str
    description: str  # lines; an indented line is preformatted
    children: tuple[Key, ...] = ()  # an array of tables or a table of tables: its keys


@dataclass(frozen=True)
class Section:
    name: str
    intro: str
    keys: tuple[Key, ...]


def _comment_blocks(lines: list[str], is_key: re.Pattern[str],
                    strip: str = "#") -> dict[str, str]:
    """Key name -> the comment block above it (shared by keys that follow without a break)."""
    out: dict[str, str] = {}
    block: list[str] = []
    after_key = False
    for raw in lines:
        line = raw.strip()
        key = is_key.match(raw)
        if key and (key.group(1) or "").startswith("#") and not _is_toml(raw[2:]):
            key = None  # prose that looks like a key ("# policy = "kill": ...")
        if key:
            out[key.group(2)] = "\n".join(block)
            after_key = True
        elif line.startswith(strip):
            if after_key:
                block, after_key = [], False
            text = line[len(strip):]
            block.append(text[1:] if text.startswith(" ") else text)
        else:
            block, after_key = [], False
    return out


def _is_toml(line: str) -> bool:
    try:
        tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return False
    return True


def toml_comments(path: Path = DEFAULT_TOML) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """(section -> key -> comment, section -> introduction) from the documented default file."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    if not path.exists():  # an installed package: the models' own comments only
        return {}, {}
    for raw in path.read_text().splitlines():
        found = _SECTION_LINE.match(raw)
        if found:
            current = sections.setdefault(found.group(1), [])
        else:
            current.append(raw)
    comments, intros = {}, {}
    for name, lines in sections.items():
        head = 0
        while head < len(lines) and lines[head].startswith("#"):
            head += 1
        if 0 < head < len(lines) and not lines[head].strip():
            intros[name] = "\n".join(ln.removeprefix("#").removeprefix(" ")
                                     for ln in lines[:head])
            lines = lines[head:]
        comments[name] = _comment_blocks(lines, _KEY_LINE)
    return comments, intros


def source_comments(model: type[BaseModel]) -> dict[str, str]:
    try:
        lines = inspect.getsource(model).splitlines()[1:]
    except (OSError, TypeError):
        return {}
    return _comment_blocks(lines, _FIELD_LINE)


def docstring_bullets(model: type[BaseModel]) -> dict[str, str]:
    doc = sys.modules[model.__module__].__doc__ or ""
    out: dict[str, str] = {}
    for bullet in re.split(r"\n(?=- )", doc):
        found = re.match(r"- ``([a-z_]+)``", bullet)
        if found:
            out.setdefault(found.group(1), " ".join(bullet[2:].split()).replace("``", "`"))
    return out


def type_name(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " | ".join(type_name(a) for a in rest)
        return text + " (optional)" if len(rest) < len(args) else text
    if origin is tuple:
        item = args[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "array of tables"
        return f"array of {type_name(item)}"
    if origin is dict:
        item = args[1]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return "table of tables"
        return f"table of {type_name(item)}"
    return {bool: "boolean", int: "integer", float: "float", str: "string"}.get(
        annotation, str(annotation))


def range_text(field: FieldInfo) -> str:
    low = high = ""
    parts = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"{item.ge} <= "
        elif isinstance(item, annotated_types.Gt):
            low = f"{item.gt} < "
        elif isinstance(item, annotated_types.Le):
            high = f" <= {item.le}"
        elif isinstance(item, annotated_types.Lt):
            high = f" < {item.lt}"
        elif isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length} characters")
        elif isinstance(item, annotated_types.MaxLen):
            parts.append(f"at most {item.max_length} characters")
        elif getattr(item, "pattern", None):
            parts.append(f"matches {item.pattern}")
    if low or high:
        parts.insert(0, f"{low}x{high}")
    return ", ".join(parts)


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _submodel(annotation: Any) -> type[BaseModel] | None:
    args = typing.get_args(annotation)
    item = args[-1] if typing.get_origin(annotation) in (tuple, dict) and args else None
    if item is Ellipsis:
        item = args[0]
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def model_keys(model: type[BaseModel], prefix: str,
               toml: dict[str, str] | None = None) -> tuple[Key, ...]:
    sources = [toml or {}, source_comments(model), docstring_bullets(model)]
    keys = []
    for name, field in model.model_fields.items():
        description = field.description or next((s[name] for s in sources if s.get(name)), "")
        sub = _submodel(field.annotation)
        children: tuple[Key, ...] = ()
        if sub is not None:
            inner = f"{prefix}{name}[]." if typing.get_origin(field.annotation) is tuple \
                else f"{prefix}{name}.<name>."
            children = model_keys(sub, inner)
        keys.append(Key(f"{prefix}{name}", type_name(field.annotation),
                        value_text(_default(field)), range_text(field), description, children))
    return tuple(keys)


def sections(toml_path: Path = DEFAULT_TOML) -> tuple[Section, ...]:
    """Every section of :class:`~autoextend.config.Settings`, in the file's order."""
    comments, intros = toml_comments(toml_path)
    out = []
    for name, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        intro = intros.get(name) or inspect.cleandoc(model.__doc__ or "").replace("``", "`")
        if model.__doc__ == inspect.getdoc(BaseModel) or intro.startswith("Usage docs"):
            intro = ""
        out.append(Section(name, intro, model_keys(model, f"{name}.", comments.get(name))))
    return tuple(out)


def undocumented(found: tuple[Section, ...]) -> list[str]:
    """Keys without a description (tests/docs requires none)."""
    missing = []
    stack = [k for s in found for k in s.keys]
    while stack:
        key = stack.pop()
        if not key.description.strip():
            missing.append(key.name)
        stack.extend(key.children)
    return sorted(missing)
