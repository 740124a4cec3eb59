"""The generated documents are in sync with their sources: docs/config.md and
man/autoextend.toml.5 with the settings models (and config/autoextend.toml's comments),
man/autoextend.8 with the click command tree. Regenerate with ``python -m autoextend.docgen``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoextend.config import Settings
from autoextend.docgen import keys
from autoextend.docgen.__main__ import generate, main

ROOT = Path(__file__).resolve().parents[2]
GENERATED = {"config": "docs/config.md", "man5": "man/autoextend.toml.5",
             "man8": "man/autoextend.8"}


@pytest.mark.parametrize("what", sorted(GENERATED))
def test_the_committed_file_is_the_generators_output(what: str) -> None:
    committed = (ROOT / GENERATED[what]).read_text()
    assert committed == generate(what), (
        f"{GENERATED[what]} is out of date: run "
        f"`.venv/bin/python -m autoextend.docgen {what} > {GENERATED[what]}`")


def test_every_key_has_a_description() -> None:
    assert keys.undocumented(keys.sections()) == []


def _dotted(model: type, prefix: str) -> set[str]:
    out = set()
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        out.add(prefix + name)
        sub = keys._submodel(field.annotation)
        if sub is not None:
            inner = "[]." if "tuple" in str(field.annotation) else ".<name>."
            out |= _dotted(sub, prefix + name + inner)
    return out


def test_every_key_of_the_settings_is_in_the_reference() -> None:
    names: set[str] = set()
    for section, field in Settings.model_fields.items():
        names |= _dotted(field.annotation, section + ".")  # type: ignore[arg-type]
    assert len(names) > 100
    reference = generate("config")
    man5 = generate("man5")
    for name in names:
        assert f"`{name}`" in reference, name
        assert name.replace("\\", "\\e") in man5, name


def test_a_descriptions_sources_in_order() -> None:
    # The documented default file first; a key that follows another without a comment of
    # its own shares the block above it; a commented-out key line counts as the key.
    comments, intros = keys.toml_comments()
    assert comments["policy"]["retry_max_s"] == comments["policy"]["retry_initial_s"]
    assert "Unset (the default): 30 x poll_interval_s" in comments["policy"]["full_poll_interval_s"]
    # Prose that looks like a key ("# policy = "kill": terminate ...") is not one.
    assert comments["resume"]["kill_after_s"].startswith('policy = "kill": terminate')
    assert intros["lease"].startswith("Host id (delta lease) and SPM lease")
    # Fields of nested tables are described by the comments next to the model's fields.
    (overrides,) = [k for s in keys.sections() for k in s.keys if k.name == "policy.overrides"]
    assert [c.name for c in overrides.children][:2] == ["policy.overrides[].vg",
                                                        "policy.overrides[].lv"]
    assert "every one given must" in overrides.children[0].description


def test_the_man_pages_name_every_command() -> None:
    from autoextend.cli.main import cli

    man8 = generate("man8")
    for group in ("config", "lease", "spm", "volume", "lab"):
        for name in cli.commands[group].commands:  # type: ignore[attr-defined]
            assert f'.SS "autoextend {group} {name}'.replace("-", "\\-") in man8, name
    for name in ("run", "status", "demo"):
        assert f'.SS "autoextend {name}' in man8


def test_the_generator_command_line() -> None:
    assert main(["nothing"]) == 2
    assert main([]) == 2
    out = subprocess.run([sys.executable, "-m", "autoextend.docgen", "man5"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout == (ROOT / GENERATED["man5"]).read_text()
