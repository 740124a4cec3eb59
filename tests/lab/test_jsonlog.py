"""autoextend/lab/jsonlog.py: a reader racing the writer sees only complete records."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from autoextend.lab.jsonlog import json_records, parse_records

records = st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=8),
                                   max_size=4), max_size=6)


@given(records, st.data())
def test_a_read_at_any_point_sees_exactly_the_complete_lines(recs: list[dict[str, object]],
                                                            data: st.DataObject) -> None:
    text = "".join(json.dumps(r) + "\n" for r in recs)
    cut = data.draw(st.integers(0, len(text)))
    complete = text[:cut].count("\n")
    assert parse_records(text[:cut]) == recs[:complete]


def test_torn_and_foreign_lines_are_skipped_not_raised(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert json_records(log) == []  # not written yet
    # A writer killed mid-record, then a new one appending; a library's plain print; a
    # JSON line that is not a record.
    log.write_text('{"event": "a"}\n{"event": "to\n{"event": "b"}\nplain text\n[1, 2]\n{"ev')
    assert json_records(log) == [{"event": "a"}, {"event": "b"}]
