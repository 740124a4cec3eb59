"""The run state of an ENOSPC stop from the events before it (``qmp/stopstate.py``, issue 30
item 5): a pure ENOSPC stop on named drives needs no read; anything else is read."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor.protocols import DriveInfo, DriveIoError, PauseReason
from autoextend.qmp.replies import Topology
from autoextend.qmp.stopstate import StopErrors

MiB = 1 << 20
TOPOLOGY = Topology(
    drives=(DriveInfo("vm1", "vda", "file0", "/dev/loop7", 1024 * MiB, 64 * MiB, 64 * MiB),),
    by_node={"file0": "vda", "fmt0": "vda"}, by_device={"vda-be": "vda"})


def error(**data: Any) -> dict[str, Any]:
    return {"device": "", "node-name": "fmt0", "operation": "write", "action": "stop",
            "nospace": True, "reason": "No space left on device", **data}


def test_an_enospc_stop_on_a_named_drive_needs_no_read() -> None:
    s = StopErrors()
    assert s.state() is None  # a STOP with no error before it: read
    s.note(error(), TOPOLOGY)
    state = s.state()
    assert state is not None and not state.running
    assert state.pause_reason is PauseReason.ENOSPC
    assert state.errors == (DriveIoError("vda", "/dev/loop7", True),)
    s.clear()  # RESUME
    assert s.state() is None


def test_an_unknown_drive_or_another_error_is_read() -> None:
    for data in (error(**{"node-name": "other"}), error(nospace=False), error(nospace="yes")):
        s = StopErrors()
        s.note(error(), TOPOLOGY)
        s.note(data, TOPOLOGY)
        assert s.state() is None, data


def test_errors_that_do_not_stop_are_ignored() -> None:
    s = StopErrors()
    s.note(error(action="report"), TOPOLOGY)
    s.note(error(action="ignore", nospace=False), TOPOLOGY)
    s.note("garbage", TOPOLOGY)
    assert s.state() is None and not s.unknown


@given(st.lists(st.one_of(
    st.builds(error, action=st.sampled_from(["stop", "report", "ignore", 1]),
              nospace=st.one_of(st.booleans(), st.none()),
              **{"node-name": st.sampled_from(["fmt0", "file0", "x", None])}),
    st.none(), st.integers(), st.text(max_size=5)), max_size=6))
def test_the_shortcut_only_ever_says_enospc_on_named_drives(events: list[Any]) -> None:
    s = StopErrors()
    for data in events:
        s.note(data, TOPOLOGY)
    state = s.state()
    stops = [e for e in events if isinstance(e, dict) and e.get("action") == "stop"]
    if state is not None:
        assert stops and all(e["nospace"] is True and e["node-name"] in ("fmt0", "file0")
                             for e in stops)
        assert state.pause_reason is PauseReason.ENOSPC
        assert {e.drive for e in state.errors} == {"vda"}
    else:
        assert not stops or any(e["nospace"] is not True or e["node-name"] not in
                                ("fmt0", "file0") for e in stops)
