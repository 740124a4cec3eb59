"""Timeout coherence (``config check --live``): multipath's config read as multipath.conf(5),
and each failure's outcome from the numbers, as pure functions."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend import coherence, multipath

HERE = Path(__file__).parent / "multipath"

BASE = coherence.Inputs(
    io_timeout_s=10, watchdog_fire_timeout_s=60, extender="mailbox", request_timeout_s=180,
    resume_policy="auto", kill_after_s=80, resume_backoff_max_s=30, queue_s=80,
    queueing="no_path_retry 16", watermark_bytes=2048 << 20)


def levels(i: coherence.Inputs, losses: tuple[float, ...] = (10, 100, 600)) -> dict[str, str]:
    return {o.failure: o.level for o in coherence.outcomes(i, losses)}


def test_vdsm_like_config_is_coherent() -> None:
    mp = multipath.parse((HERE / "vdsm.conf").read_text(), "vdsm.conf")
    worst = mp.worst()
    assert worst.seconds(mp.polling_interval_s) == 80 == coherence.lease_expiry_s(BASE)
    assert set(levels(BASE).values()) == {"ok", "warning"}  # the warning: array full


def test_a_device_that_queues_forever_is_the_worst_and_a_risk() -> None:
    mp = multipath.parse((HERE / "array-queue.conf").read_text(), "array-queue.conf")
    worst = mp.worst()
    assert worst.where == 'device "3PARdata" "VV"' and math.isinf(worst.seconds(5))
    found = levels(replace(BASE, queue_s=math.inf))
    assert found["queueing"] == "risk"
    assert found["path loss 600 s"] == "ok"  # the risk is said once, on the queueing line


def test_overrides_beat_devices_and_multipaths_beat_overrides() -> None:
    text = """
defaults {
    no_path_retry fail
}
overrides {
    no_path_retry 4
}
devices {
    device {
        vendor "X"
        no_path_retry queue
    }
}
multipaths {
    multipath {
        wwid 3600a
        no_path_retry 30
    }
}
"""
    mp = multipath.parse(text, "t")
    assert [q.where for q in mp.candidates] == ["overrides", "multipath 3600a"]
    assert mp.worst().seconds(mp.polling_interval_s) == 150


def test_builtin_hardware_table_devices_are_not_candidates() -> None:
    mp = multipath.parse((HERE / "array-queue.conf").read_text(), "multipath -t",
                         source_is_builtin=True)
    assert [q.where for q in mp.candidates] == ["defaults"]


def test_queue_if_no_path_feature_without_retry_queues_forever() -> None:
    mp = multipath.parse('defaults {\n features "1 queue_if_no_path"\n}\n', "t")
    assert math.isinf(mp.worst().seconds(5))
    assert multipath.parse("defaults {\n}\n", "t").worst().seconds(5) == 0


@pytest.mark.parametrize("text, says", [
    ("defaults {\n no_path_retry banana\n}\n", "not queue, fail or a count"),
    ("defaults {\n polling_interval 0\n}\n", "polling_interval '0'"),
    ("defaults {\n", "never closed"),
    ("}\n", "closes nothing"),
    ("no_path_retry 3\n", "not multipath.conf syntax"),
    ("defaults {\n = 3\n}\n", "not multipath.conf syntax"),
])
def test_garbage_is_refused_with_the_line(text: str, says: str) -> None:
    with pytest.raises(multipath.MultipathConfigError, match=says):
        multipath.parse(text, "bad.conf")


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        mp = multipath.parse(text, "fuzz")
    except multipath.MultipathConfigError:
        return
    assert mp.candidates and mp.worst().seconds(mp.polling_interval_s) >= 0


def test_guest_timeout_shorter_than_queueing_is_a_risk_only_when_the_loss_outlasts_it() -> None:
    i = replace(BASE, guest_io_timeout_s=30)
    found = levels(i, (20, 40))
    assert found["path loss 20 s"] == "ok" and found["path loss 40 s"] == "risk"


def test_mailbox_deadline_shorter_than_a_failover_is_a_risk() -> None:
    assert levels(replace(BASE, request_timeout_s=100))["SPM crash"] == "risk"
    assert levels(replace(BASE, extender="local", request_timeout_s=1))["SPM crash"] == "ok"


def test_queueing_past_the_lease_expiry_is_a_warning() -> None:
    assert levels(replace(BASE, queue_s=200))["queueing"] == "warning"
    assert levels(replace(BASE, queue_s=200, extender="local"))["queueing"] == "ok"


@given(t=st.integers(1, 60), queue=st.integers(0, 1000), loss=st.integers(1, 3600),
       guest=st.none() | st.integers(1, 120),
       policy=st.sampled_from(["auto", "leave", "kill"]))
def test_outcome_properties(t: int, queue: int, loss: int, guest: int | None,
                            policy: str) -> None:
    i = replace(BASE, io_timeout_s=t, queue_s=queue, guest_io_timeout_s=guest,
                resume_policy=policy, request_timeout_s=10 * t + 60)
    found = coherence.path_loss(i, loss)
    # a guest-visible error exactly when the guest's own timeout is shorter than the queueing
    assert (found.level == "risk") == (guest is not None and min(loss, queue) > guest)
    assert ("QEMU pauses" in found.outcome) == (loss > queue)
    assert ("lease can lapse" in found.outcome) == (loss > 6 * t)
