"""The reload guard (autoextend/reloadguard.py): a half-written file never changes a running
value unseen, and ordinary edits pass. Pure: parsed TOML in, changes out."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import tomli_w
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from autoextend import reloadguard
from autoextend import settings as settings_mod
from autoextend.errors import ConfigError
from autoextend.reload import is_live
from autoextend.settings import Settings
from tests.hypo import examples

FACTOR = 4.0


def parse(text: str) -> tuple[Settings, dict[str, Any]] | None:
    """The file's settings and its parsed TOML; None when the service would refuse it."""
    try:
        raw = tomllib.loads(text)
        return settings_mod.from_mapping(raw), raw
    except (tomllib.TOMLDecodeError, ConfigError):
        return None


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A config that names every key it sets, with the sections in any order."""
    policy: dict[str, Any] = {
        "chunk_mib": draw(st.integers(1, 1 << 14)),
        "utilization_percent": draw(st.integers(0, 99)),
        "cap_factor": draw(st.floats(1.0, 4.0).map(lambda f: round(f, 3))),
        "poll_interval_s": draw(st.floats(0.01, 3600).map(lambda f: round(f, 3))),
        "extend_timeout_s": draw(st.floats(0.5, 3600).map(lambda f: round(f, 2))),
    }
    if draw(st.booleans()):
        policy["overrides"] = draw(st.lists(st.fixed_dictionaries({
            "vg": st.sampled_from(["vg0", "vg1"]), "chunk_mib": st.integers(1, 1 << 14),
        }), min_size=1, max_size=3))
    if draw(st.booleans()):
        policy["vg_reserve_mib"] = draw(st.dictionaries(
            st.sampled_from(["vg0", "vg1", "vg2"]), st.integers(0, 1 << 16), min_size=1))
    sections: dict[str, Any] = {
        "service": {"hypervisor": "qmp", "dry_run": draw(st.booleans()),
                    "log_level": draw(st.sampled_from(["debug", "info", "warning"]))},
        "policy": policy,
        "resume": {"policy": draw(st.sampled_from(["auto", "leave", "kill"])),
                   "kill_after_s": draw(st.floats(1.0, 86400).map(lambda f: round(f, 1)))},
        "qmp": {"socket_glob": "/run/ae/*.sock"},
    }
    order = draw(st.permutations(list(sections)))
    return {name: sections[name] for name in order}


@settings(max_examples=examples(40))  # each example validates every prefix of its file
@given(configs())
def test_a_file_cut_at_any_line_never_changes_a_value_unheld(data: dict[str, Any]) -> None:
    """Every prefix of the file that ends at a line (so: at every section boundary too)
    and that the service would accept changes nothing, or is held back entirely."""
    text = tomli_w.dumps(data)
    full = parse(text)
    assume(full is not None)
    assert full is not None
    running = full[0]
    lines = text.splitlines(keepends=True)
    for cut in range(len(lines) + 1):
        parsed = parse("".join(lines[:cut]))
        if parsed is None:
            continue
        found = reloadguard.changes(running, parsed[0], parsed[1], FACTOR)
        assert found == reloadguard.held(found), (cut, [c.line() for c in found])


@settings(max_examples=examples(200))
@given(configs(), st.data())
def test_a_file_cut_anywhere_changes_at_most_the_value_it_cuts_and_by_less_than_the_factor(
    data: dict[str, Any], pick: st.DataObject,
) -> None:
    """A cut inside a line that still parses (a number cut in its digits) changes at most the
    one value on that line, and only by less than the factor (``1.25`` read as ``1.2``);
    anything more is held back."""
    text = tomli_w.dumps(data)
    full = parse(text)
    assume(full is not None)
    assert full is not None
    running = full[0]
    cut = pick.draw(st.integers(0, len(text)))
    parsed = parse(text[:cut])
    assume(parsed is not None)
    assert parsed is not None
    found = reloadguard.changes(running, parsed[0], parsed[1], FACTOR)
    free = [c for c in found if c.why_held is None]
    last_line = text[:cut].rsplit("\n", 1)[-1]
    for change in free:
        assert last_line.split("=")[0].strip() == change.key.rsplit(".", 1)[-1], change.line()
        assert isinstance(change.old, int | float) and isinstance(change.new, int | float)
        if change.key.split(".")[0] in reloadguard.FACTOR_SECTIONS:
            assert not reloadguard.beyond_factor(change.old, change.new, FACTOR)


@given(configs(), st.data())
def test_ordinary_edits_are_never_held(data: dict[str, Any], pick: st.DataObject) -> None:
    """An edit that names what it changes, moves numbers by at most the factor, adds keys or
    sections, or switches a flag or a choice, goes through at once."""
    running_text = tomli_w.dumps(data)
    before = parse(running_text)
    assume(before is not None)
    assert before is not None
    edited = {name: dict(section) for name, section in data.items()}
    policy = edited["policy"]
    for key in ("chunk_mib", "poll_interval_s", "extend_timeout_s"):
        if pick.draw(st.booleans(), label=f"edit {key}"):
            factor = pick.draw(st.floats(1 / FACTOR, FACTOR), label=f"{key} by")
            value = policy[key] * factor
            if isinstance(policy[key], int):  # rounded toward the old value: within the factor
                value = max(1, math.ceil(value) if factor < 1 else math.floor(value))
            policy[key] = value
    edited["service"]["dry_run"] = pick.draw(st.booleans(), label="dry_run")
    edited["resume"]["policy"] = pick.draw(st.sampled_from(["auto", "leave", "kill"]))
    if pick.draw(st.booleans(), label="add a key"):
        policy["retry_max_s"] = 60.0
    if pick.draw(st.booleans(), label="add an override"):
        policy["overrides"] = [*policy.get("overrides", []), {"vm": "vm9", "chunk_mib": 64}]
    after = parse(tomli_w.dumps(edited))
    assume(after is not None)
    assert after is not None
    found = reloadguard.changes(before[0], after[0], after[1], FACTOR)
    assert reloadguard.held(found) == [], [c.line() for c in found]


@given(st.floats(1e-3, 1e6), st.floats(1e-3, 1e6), st.floats(1.0, 100.0))
def test_beyond_factor_is_symmetric_and_means_the_ratio(a: float, b: float, f: float) -> None:
    assert reloadguard.beyond_factor(a, b, f) == reloadguard.beyond_factor(b, a, f)
    assert reloadguard.beyond_factor(a, b, f) == (max(a, b) / min(a, b) > f)
    assert not reloadguard.beyond_factor(a, a, f)


def test_a_move_to_or_from_zero_is_beyond_every_factor() -> None:
    assert reloadguard.beyond_factor(0, 5, 1000.0) and reloadguard.beyond_factor(20, 0, 1000.0)
    assert not reloadguard.beyond_factor(0, 0, 1.0)


def test_the_lines_name_the_key_the_values_and_the_rule() -> None:
    running = settings_mod.from_mapping({
        "service": {"dry_run": True},
        "policy": {"chunk_mib": 128, "utilization_percent": 50,
                   "overrides": [{"vg": "a", "chunk_mib": 8}, {"vm": "x", "chunk_mib": 16}],
                   "vg_reserve_mib": {"vg0": 64, "vg1": 32}}})
    text = ('[service]\ndry_run = true\n[policy]\nchunk_mib = 4096\nutilization_percent = 60\n'
            '[[policy.overrides]]\nvg = "a"\nchunk_mib = 8\n'
            '[policy.vg_reserve_mib]\nvg0 = 64\n')
    parsed = parse(text)
    assert parsed is not None
    lines = [c.line() for c in reloadguard.changes(running, parsed[0], parsed[1], 4.0)]
    assert lines == [
        "policy.chunk_mib: 128 -> 4096 (held: moves more than x4)",
        'policy.overrides[1].chunk_mib: 16 -> unset (held: not in the file, so the default)',
        'policy.overrides[1].vm: "x" -> unset (held: not in the file, so the default)',
        "policy.utilization_percent: 50 -> 60",
        "policy.vg_reserve_mib.vg1: 32 -> unset (held: not in the file, so the default)",
    ]


def test_leaves_walk_sections_arrays_of_tables_and_tables_of_values() -> None:
    s = settings_mod.from_mapping({"policy": {"overrides": [{"vg": "a", "chunk_mib": 1}],
                                              "vg_reserve_mib": {"vg0": 1}},
                                   "lvm": {"vgs": ["v"]}})
    keys = {reloadguard.dotted(p): v for p, v in reloadguard.leaves(s)}
    assert keys["policy.overrides[0].vg"] == "a" and keys["policy.vg_reserve_mib.vg0"] == 1
    assert keys["lvm.vgs"] == ("v",) and "policy.overrides" not in keys
    assert all(not isinstance(v, Settings) for v in keys.values())
    assert is_live("service.reload_max_factor")
