"""autoextend.validation: the rules beyond one key, and `config check` == `run` for each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st

from autoextend import settings, validation
from autoextend.errors import ConfigError
from autoextend.lease.layout import MAILBOX_OFFSET
from tests.cli.clirun import autoextend, loop_config, write_config
from tests.hypo import examples

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "autoextend.toml"

MAILBOX = {
    "service": {"extender": "mailbox"},
    "volumes": {"backend": "loop"},
    "lease": {"path": "/dev/shared", "host_id": 3},
    "lvm": {"vgs": ["vg0"]},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) for k, v in base.items()}
    for section, values in over.items():
        out.setdefault(section, {}).update(values)
    return out


# (name, settings over MAILBOX or over the defaults, expected key, expected text)
CROSS_SECTION: list[tuple[str, dict[str, Any] | None, str, str]] = [
    ("default-lvm-needs-pvs", None, "lvm.pvs", "must list the pool's PVs for volumes.backend = lvm"),
    ("mailbox-no-lease-path", {"lease": {"path": ""}}, "lease.path", "shared metadata area"),
    ("mailbox-no-host-id", {"lease": {"host_id": 0}}, "lease.host_id", "1..lease.max_hosts"),
    ("mailbox-no-vgs", {"lvm": {"vgs": []}}, "lvm.vgs", "pool's VGs"),
    ("mailbox-path-differs", {"mailbox": {"path": "/dev/other"}}, "mailbox.path",
     "equal to lease.path"),
    ("host-without-mailbox", {"mailbox": {"max_hosts": 2}}, "mailbox.max_hosts",
     "leaves lease.host_id 3 without a mailbox"),
    ("mailbox-offset-unaligned", {"mailbox": {"offset": MAILBOX_OFFSET + 512}}, "mailbox.offset",
     "multiple of 4096"),
    ("mailbox-overlaps-lease", {"mailbox": {"offset": MAILBOX_OFFSET - 4096}}, "mailbox.offset",
     "overlaps the lease area"),
]


def _case(over: dict[str, Any] | None) -> dict[str, Any]:
    return {} if over is None else _merge(MAILBOX, over)


@pytest.mark.parametrize(("name", "over", "key", "text"), CROSS_SECTION,
                         ids=[c[0] for c in CROSS_SECTION])
def test_service_rules_find_each_cross_section_mistake(
    name: str, over: dict[str, Any] | None, key: str, text: str
) -> None:
    s = settings.from_mapping(_case(over))  # each key alone is fine
    found = validation.service_problems(s)
    assert [k for k, _ in found] == [key]
    assert text in found[0][1]
    with pytest.raises(ConfigError, match=key):
        validation.check_service(s, "f.toml")


def test_a_valid_mailbox_config_passes() -> None:
    s = settings.from_mapping(MAILBOX)
    assert validation.service_problems(s) == []
    # The mailbox right after the lease area (its default place) is not an overlap.
    s = settings.from_mapping(_merge(MAILBOX, {"mailbox": {"offset": MAILBOX_OFFSET}}))
    assert validation.service_problems(s) == []


def test_local_mode_ignores_the_mailbox_keys() -> None:
    s = settings.from_mapping({"volumes": {"backend": "loop"}, "mailbox": {"path": "/x"}})
    assert validation.service_problems(s) == []


def test_several_problems_are_named_on_one_line() -> None:
    s = settings.from_mapping({"service": {"extender": "mailbox"}})
    with pytest.raises(ConfigError) as info:
        validation.check_service(s, "f.toml")
    keys = [k for k, _ in info.value.problems]
    assert keys == ["lvm.pvs", "lease.path", "lease.host_id", "lvm.vgs"]
    assert "\n" not in str(info.value)


def test_the_rule_list_is_the_hook() -> None:
    """Another section's rule is added by appending to SERVICE_RULES; check_service (and so
    `config check` and `run`) then applies it."""
    def deadline(s: settings.Settings) -> list[tuple[str, str]]:
        return [("policy.extend_timeout_s", "too short")] if s.policy.extend_timeout_s < 99 else []

    s = settings.from_mapping({"volumes": {"backend": "loop"}})
    validation.SERVICE_RULES.append(deadline)
    try:
        with pytest.raises(ConfigError, match="policy.extend_timeout_s: too short"):
            validation.check_service(s)
    finally:
        validation.SERVICE_RULES.remove(deadline)
    validation.check_service(s)


@pytest.mark.parametrize(("name", "over", "key", "text"), CROSS_SECTION,
                         ids=[c[0] for c in CROSS_SECTION])
def test_config_check_and_run_print_the_same_line(
    tmp_path: Path, name: str, over: dict[str, Any] | None, key: str, text: str
) -> None:
    """What `config check` accepts, `run` can use: for each mistake both exit 2 with the
    same one line, and run starts nothing."""
    if over is None:
        path = tmp_path / "autoextend.toml"
        path.write_text(SHIPPED.read_text())  # the shipped default config, as installed
    else:
        data = _merge(_case(over), {
            "service": {"control_socket": f"{tmp_path}/ctl.sock"},
            "qmp": {"socket_glob": f"{tmp_path}/qmp/*.sock"},
        })
        path = tmp_path / "c.toml"
        path.write_text(tomli_w.dumps(data))
    check = autoextend("--config", str(path), "config", "check")
    run = autoextend("run", "--config", str(path), "--log-format", "json")
    assert check.code == run.code == 2, (check.stderr, run.stderr)
    assert check.error == run.error
    assert check.error.startswith(f"autoextend: config error: {path}: {key}: ")
    assert text in check.error
    assert not (tmp_path / "ctl.sock").exists()


def test_config_check_accepts_what_run_starts_with(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", loop_config(tmp_path))
    assert autoextend("--config", str(path), "config", "check").stdout == "config ok\n"


section_choices = st.fixed_dictionaries({
    "service": st.fixed_dictionaries({
        "extender": st.sampled_from(["local", "mailbox"]),
        "hypervisor": st.sampled_from(["qmp", "libvirt"]),
    }),
    "volumes": st.fixed_dictionaries({"backend": st.sampled_from(["lvm", "loop"])}),
    "lvm": st.fixed_dictionaries({
        "pvs": st.lists(st.sampled_from(["/dev/loop5", "/dev/loop6"]), max_size=2, unique=True),
        "vgs": st.lists(st.sampled_from(["vg0", "vg1"]), max_size=2, unique=True),
    }),
    "lease": st.fixed_dictionaries({
        "path": st.sampled_from(["", "/dev/shared"]), "host_id": st.integers(0, 4),
    }),
    "mailbox": st.fixed_dictionaries({
        "path": st.sampled_from(["", "/dev/shared", "/dev/other"]),
        "max_hosts": st.integers(1, 4),
        "offset": st.sampled_from([None, 0, MAILBOX_OFFSET, MAILBOX_OFFSET + 4096, 4096 * 3]),
    }),
})


@settings_profile(max_examples=examples(200), deadline=None)
@given(section_choices)
def test_what_check_accepts_the_service_is_built_from(data: dict[str, Any]) -> None:
    """Property: check_service passes exactly when every part of `run` can be built from
    the settings (the volume backend, the hypervisor, the cluster agent, the monitor)."""
    from autoextend.service import Service

    if data["mailbox"]["offset"] is None:
        del data["mailbox"]["offset"]
    s = settings.from_mapping(data)
    accepted = not validation.service_problems(s)
    try:
        Service(s)
    except ConfigError:
        assert not accepted
    else:
        assert accepted
