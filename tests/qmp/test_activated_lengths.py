"""``qmp/migration.py: activated_lengths``: the length QEMU activated each drive's protocol
node with after an incoming migration, or None while its nodes await activation."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from autoextend.qmp.migration import activated_lengths, guest_did_io

MiB = 1 << 20


def caps(late: bool) -> list[dict[str, Any]]:
    return [{"capability": "events", "state": True},
            {"capability": "late-block-activate", "state": late}]


def nodes(**lengths: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"node-name": "fmt0", "drv": "qcow2",
                                  "image": {"virtual-size": 1 << 30}}]
    out += [{"node-name": n, "drv": "host_device", "image": {"virtual-size": size}}
            for n, size in lengths.items()]
    return out


def test_activated_at_completion_gives_each_drives_protocol_length() -> None:
    got = activated_lengths(caps(False), "paused", nodes(file0=196 * MiB, file1=64 * MiB),
                            {"vda": "file0", "vdb": "file1", "vdc": "gone"})
    assert got == (("vda", 196 * MiB), ("vdb", 64 * MiB))


def test_late_block_activate_before_cont_is_unknown_and_after_cont_known() -> None:
    for status in ("paused", "io-error", "prelaunch"):
        assert activated_lengths(caps(True), status, nodes(file0=16 * MiB),
                                 {"vda": "file0"}) is None
    assert activated_lengths(caps(True), "running", nodes(file0=64 * MiB),
                             {"vda": "file0"}) == (("vda", 64 * MiB),)


@given(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(), st.text())),
       st.one_of(st.none(), st.integers(), st.text(),
                 st.lists(st.dictionaries(st.sampled_from(["node-name", "image"]),
                                          st.one_of(st.text(), st.integers(), st.none(),
                                                    st.just({"virtual-size": True}),
                                                    st.just({"virtual-size": 5}))))))
def test_any_reply_gives_lengths_or_none_never_an_error(capabilities: Any, reply: Any) -> None:
    got = activated_lengths(capabilities, "paused", reply, {"vda": "file0"})
    assert got is None or all(isinstance(n, int) and not isinstance(n, bool) for _, n in got)
    if not isinstance(reply, list) or not isinstance(capabilities, list):
        assert got is None


def stats(**ops: int) -> list[dict[str, Any]]:
    return [{"device": "", "qdev": "vda", "stats": {"rd_operations": 0, "wr_operations": 0,
                                                     "flush_operations": 0}},
            {"device": "", "qdev": "vdb", "stats": {"rd_operations": 0, "wr_operations": 0,
                                                     "flush_operations": 0, **ops}}]


def test_a_guest_that_did_any_io_here_has_run() -> None:
    assert guest_did_io(stats()) is False  # a destination before its first cont
    for key in ("rd_operations", "wr_operations", "flush_operations"):
        assert guest_did_io(stats(**{key: 1})) is True
    assert guest_did_io([]) is False  # no block device at all: nothing to guard


@given(st.one_of(st.none(), st.integers(), st.text(),
                 st.lists(st.one_of(st.none(), st.text(), st.dictionaries(
                     st.just("stats"), st.one_of(st.none(), st.dictionaries(
                         st.sampled_from(["rd_operations", "wr_operations"]),
                         st.one_of(st.integers(), st.booleans(), st.text()))))))))
def test_any_blockstats_reply_gives_a_bool_or_none_never_an_error(reply: Any) -> None:
    got = guest_did_io(reply)
    assert got in (True, False, None)
    if not isinstance(reply, list):
        assert got is None
