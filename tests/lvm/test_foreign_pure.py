"""The foreign-write ledger (lvm/foreign.py): our own commits, in flight or done, never look
foreign; any other commit does, once, with the LV difference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.errors import NotSpmError
from autoextend.lvm.foreign import WriteLedger, lv_diff


class Term:
    def __init__(self) -> None:
        self.valid = True

    def check(self) -> None:
        if not self.valid:
            raise NotSpmError("term ended")


def ledger() -> WriteLedger:
    led = WriteLedger()
    led.writer_started(Term())
    return led


# Steps: "begin" (our command starts), "commit" (it commits: seqno + 1), "end" (it ends,
# counted as committed if it did), "foreign" (someone else commits), "look" (the audit).
steps = st.lists(st.sampled_from(["begin", "commit", "end", "foreign", "look"]), max_size=60)


@given(steps)
def test_found_exactly_when_someone_else_committed(plan: list[str]) -> None:
    led = ledger()
    seqno = 7
    led.audit("vg", seqno, {}, led.mark("vg"))  # baseline
    in_flight: list[bool] = []   # our commands in flight (at most one per VG: the lock)
    foreign_since_look = 0
    for step in plan:
        if step == "begin" and not in_flight:
            led.begin("vg")
            in_flight.append(False)
        elif step == "commit" and in_flight and not in_flight[0]:
            in_flight[0] = True
            seqno += 1
        elif step == "end" and in_flight:
            led.end("vg", in_flight.pop())
        elif step == "foreign":
            seqno += 1
            foreign_since_look += 1
        elif step == "look":
            conclusive, found = led.audit("vg", seqno, {}, led.mark("vg"))
            # judged exactly when none of ours is in flight; then a foreign commit since
            # the last judged look is always seen, and ours never are
            assert conclusive == (not in_flight)
            if conclusive:
                assert (found is not None) == (foreign_since_look > 0)
                foreign_since_look = 0
    if in_flight:
        led.end("vg", in_flight.pop())
    conclusive, found = led.audit("vg", seqno, {}, led.mark("vg"))
    assert conclusive and (found is not None) == (foreign_since_look > 0)


def test_a_command_that_ran_during_the_read_makes_the_look_inconclusive() -> None:
    led = ledger()
    led.audit("vg", 3, {}, led.mark("vg"))
    mark = led.mark("vg")
    led.begin("vg")
    led.end("vg", True)   # ours committed (4) while the audit read 3 or 4: cannot tell
    assert led.audit("vg", 3, {}, mark) == (False, None)
    assert led.audit("vg", 4, {}, led.mark("vg")) == (True, None)
    assert led.audit("vg", 5, {}, led.mark("vg"))[1] is not None


def test_report_names_the_lvs_and_moves_the_baseline() -> None:
    led = ledger()
    mib = 1 << 20
    led.audit("vg", 10, {"a": 8 * mib, "b": 8 * mib}, led.mark("vg"))
    led.begin("vg")
    led.end("vg", True)  # ours: a grew
    _, found = led.audit("vg", 12, {"a": 16 * mib, "c": 4 * mib}, led.mark("vg"))
    assert found is not None and (found.expected, found.observed) == (11, 12)
    assert found.appeared == ("c",) and found.vanished == ("b",)
    assert found.resized == (("a", 8 * mib, 16 * mib),)
    assert "+c" in found.describe() and "-b" in found.describe()
    assert led.audit("vg", 12, {"a": 16 * mib, "c": 4 * mib}, led.mark("vg")) == (True, None)
    assert led.foreign_writes == 1 and led.last == found


def test_a_new_writer_takes_a_new_baseline_and_a_lost_term_audits_nothing() -> None:
    led = WriteLedger()
    assert not led.active()
    term = Term()
    led.writer_started(term)
    led.audit("vg", 5, {}, led.mark("vg"))
    epoch = led.epoch
    led.writer_started(Term())  # the next term: what the old SPM did in between is not foreign
    assert led.epoch == epoch + 1
    assert led.audit("vg", 40, {}, led.mark("vg")) == (True, None)
    assert led.audit("vg", 40, {}, led.mark("vg")) == (True, None)
    term.valid = False
    assert led.active()  # the new term's authority holds; the old one is gone


@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 9)),
       st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 9)))
def test_lv_diff(before: dict[str, int], after: dict[str, int]) -> None:
    appeared, vanished, resized = lv_diff(before, after)
    assert set(appeared) == after.keys() - before.keys()
    assert set(vanished) == before.keys() - after.keys()
    assert {lv for lv, _, _ in resized} == {lv for lv in before.keys() & after.keys()
                                            if before[lv] != after[lv]}
