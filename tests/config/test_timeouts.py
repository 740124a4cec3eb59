"""One extension deadline, derived from the lease timings; inconsistent timeouts rejected."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend import timeouts
from autoextend.errors import ConfigError
from autoextend.settings import Settings, from_mapping


def mailbox(**sections: dict[str, object]) -> Settings:
    data: dict[str, dict[str, object]] = {"service": {"extender": "mailbox"}}
    data.update(sections)
    return from_mapping(data)


def test_shipped_defaults_outlast_one_failover() -> None:
    s = mailbox()
    assert timeouts.failover_s(10.0, 60.0) == 160.0
    assert timeouts.check_timeouts(s) == []
    # the mailbox's own deadline comes first; the monitor adds one LVM command (refresh)
    assert timeouts.extension_deadline_s(s) == 180.0 + 30.0
    assert timeouts.extension_deadline_s(Settings()) == Settings().policy.extend_timeout_s


def test_request_timeout_shorter_than_failover_is_a_config_error() -> None:
    s = mailbox(mailbox={"request_timeout_s": 100.0})
    [(key, problem)] = timeouts.check_timeouts(s)
    assert key == "mailbox.request_timeout_s" and "160" in problem


def test_local_mode_has_no_failover_rule() -> None:
    s = from_mapping({"mailbox": {"request_timeout_s": 1.0}})
    assert timeouts.check_timeouts(s) == []


@given(st.floats(0.05, 60.0), st.floats(0.1, 600.0), st.floats(0.1, 86400.0))
def test_rule_matches_failover(io: float, watchdog: float, request: float) -> None:
    s = mailbox(lease={"io_timeout_s": io, "watchdog_fire_timeout_s": watchdog},
                mailbox={"request_timeout_s": request})
    ok = request >= timeouts.failover_s(io, watchdog)
    assert (timeouts.check_timeouts(s) == []) is ok
    assert timeouts.extension_deadline_s(s) > request  # the mailbox gives up first


@given(st.floats(0.001, 1.0))
def test_scaled_shipped_ratios_stay_consistent(factor: float) -> None:
    """The multi-host lab scales every shipped time by one factor: still consistent."""
    s = mailbox(lease={"io_timeout_s": 10.0 * factor, "watchdog_fire_timeout_s": 60.0 * factor},
                mailbox={"request_timeout_s": 180.0 * factor})
    assert timeouts.check_timeouts(s) == []


def test_service_refuses_inconsistent_timeouts() -> None:
    from autoextend.service import Service

    s = mailbox(mailbox={"request_timeout_s": 100.0},
                lease={"path": "/nonexistent", "host_id": 1})
    with pytest.raises(ConfigError, match="mailbox.request_timeout_s"):
        Service(s)
