"""Value rules every command applies when it loads a config (autoextend.validation)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend import settings, validation
from autoextend.errors import ConfigError
from tests.cli.clirun import autoextend

# Every string key of the config that names a path, a name, a URI or a pattern.
STRING_KEYS = [
    ("service", "control_socket"), ("qmp", "socket_glob"), ("libvirt", "uri"),
    ("volumes", "loop_root"), ("lvm", "lvm_binary"), ("lease", "path"),
    ("lease", "host_name"), ("mailbox", "path"), ("metrics", "address"),
]


def _error(data: dict[str, object]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings.from_mapping(data)
    return info.value


@given(key=st.sampled_from(STRING_KEYS), head=st.text(max_size=20), tail=st.text(max_size=20))
def test_nul_is_refused_in_every_path_and_name(
    key: tuple[str, str], head: str, tail: str
) -> None:
    section, name = key
    err = _error({section: {name: f"/x{head}\0{tail}"[:60]}})
    assert (f"{section}.{name}", "must not contain a NUL byte") in err.problems


@pytest.mark.parametrize(
    "data",
    [{"lvm": {"pvs": ["/dev/loop0\0"]}}, {"lvm": {"vgs": ["vg\0"]}},
     {"policy": {"vg_reserve_mib": {"vg\0x": 1}}},
     {"policy": {"overrides": [{"vm": "a\0b", "chunk_mib": 1}]}}],
)
def test_nul_is_refused_in_lists_and_table_keys(data: dict[str, object]) -> None:
    text = str(_error(data))
    assert "NUL" in text or "invalid" in text or "not an acceptable" in text


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\0"), max_size=70))
def test_host_name_is_measured_in_bytes(name: str) -> None:
    fits = len(name.encode("utf-8")) <= validation.HOST_NAME_BYTES and len(name) <= 64
    try:
        settings.from_mapping({"lease": {"host_name": name}})
    except ConfigError as exc:
        assert not fits, exc
        assert exc.problems[0][0] == "lease.host_name"
    else:
        assert fits


def test_control_socket_fits_sun_path() -> None:
    ok = "/" + "s" * (validation.SUN_PATH_MAX - 1)
    settings.from_mapping({"service": {"control_socket": ok}})
    err = _error({"service": {"control_socket": ok + "s"}})
    assert err.problems == [("service.control_socket",
                             "is 108 bytes; a unix socket path holds at most 107")]
    # Bytes, not characters: 54 two-byte characters are 108 bytes.
    err = _error({"service": {"control_socket": "/" + "é" * 54}})
    assert "109 bytes" in str(err)
    assert _error({"service": {"control_socket": ""}}).problems == [
        ("service.control_socket", "must not be empty")]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused(value: float) -> None:
    for section, key in (("policy", "cap_factor"), ("lease", "acquire_poll_s"),
                         ("policy", "retry_initial_s")):
        err = _error({section: {key: value}})
        assert err.problems[0][0] == f"{section}.{key}"
        assert "finite" in err.problems[0][1]


@pytest.mark.parametrize(
    ("section", "low", "high"),
    [("policy", "retry_initial_s", "retry_max_s"), ("qmp", "reconnect_initial_s",
     "reconnect_max_s"), ("libvirt", "reconnect_interval_s", "reconnect_max_s"),
     ("mailbox", "reply_poll_interval_s", "reply_poll_max_s"),
     ("mailbox", "ring_retry_initial_s", "ring_retry_max_s")],
)
def test_initial_delay_not_above_its_max(section: str, low: str, high: str) -> None:
    settings.from_mapping({section: {low: 1.0, high: 1.0}})
    err = _error({section: {low: 2.0, high: 1.0}})
    assert err.problems[0][0] in (section, f"{section}.{low}")
    assert high in err.problems[0][1] or f"above {section}.{high}" in err.problems[0][1]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "0.0.0.0", "localhost", "host.example"])
def test_metrics_address_accepted(address: str) -> None:
    settings.from_mapping({"metrics": {"address": address}})


@pytest.mark.parametrize("address", ["not an address", "127.0.0.1:9466", "-x", "a/b"])
def test_metrics_address_refused(address: str) -> None:
    assert _error({"metrics": {"address": address}}).problems[0][0] == "metrics.address"


@pytest.mark.parametrize(
    ("data", "key"),
    [({"policy": {"vg_reserve_mib": {"-vg": 1}}}, "policy.vg_reserve_mib.-vg"),
     ({"policy": {"overrides": [{"lv": "a b", "chunk_mib": 1}]}}, "policy.overrides[0].lv")],
)
def test_lvm_names_in_policy(data: dict[str, object], key: str) -> None:
    assert _error(data).problems[0][0] == key


@pytest.mark.parametrize("depth", [17, 200, 5000, 100_000])
def test_deep_nesting_is_one_config_error(tmp_path: Path, depth: int) -> None:
    """RecursionError in tomllib (deep) or in the checks (shallower) never escapes."""
    for value in ("[" * depth + "]" * depth, "{a=" * depth + "1" + "}" * depth):
        path = tmp_path / "deep.toml"
        path.write_text(f"[policy]\nchunk_mib = {value}\n")
        err = pytest.raises(ConfigError, settings.load, path).value
        assert "nested deeper than" in str(err)


def test_long_bad_values_are_shown_short() -> None:
    err = _error({"policy": {"chunk_mib": "x" * 10_000}})
    assert len(str(err)) < 300


@pytest.mark.parametrize(
    ("make", "expected"),
    [(lambda p: p.mkdir(), "is a directory, not a file"),
     (lambda p: p.symlink_to("/dev/zero"), "is not a regular file"),
     (lambda p: p.write_bytes(b"#" * (settings.MAX_CONFIG_BYTES + 1)), "is larger than"),
     (lambda p: p.write_bytes(b"\xff\xfe"), "not UTF-8 text"),
     (lambda p: None, "file not found")],
)
def test_config_path_problems_are_one_line(tmp_path: Path, make: object, expected: str) -> None:
    path = tmp_path / "c.toml"
    make(path)  # type: ignore[operator]
    for args in (["--config", str(path), "config", "check"],
                 ["run", "--config", str(path)]):
        result = autoextend(*args)
        assert result.code == 2
        assert result.error == f"autoextend: config error: {path}: {expected}" or \
            result.error.startswith(f"autoextend: config error: {path}: {expected}")


def test_empty_config_path_is_a_usage_error() -> None:
    result = autoextend("--config", "", "config", "check")
    assert result.code == 2
    assert "--config" in result.error and "must not be empty" in result.error
