"""The strace parser the lease benchmark uses to count ours and sanlock's I/O alike."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# bench/ is not a package on the test path: load the module from its file.
_spec = importlib.util.spec_from_file_location(
    "lease_bench_iocount", Path(__file__).resolve().parents[2] / "bench" / "iocount.py"
)
assert _spec is not None and _spec.loader is not None
iocount = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = iocount  # dataclasses look their module up by name
_spec.loader.exec_module(iocount)
IoCall, parse_trace = iocount.IoCall, iocount.parse_trace


def test_parse_trace_vectored_calls_including_split_lines() -> None:
    text = (
        '7 preadv2(6, [{iov_base="T"..., iov_len=8192}], 1, 0, 0) = 8192\n'
        "7 preadv2(6,  <unfinished ...>\n"
        '8 pwritev2(6, [{iov_base="}"..., iov_len=512}], 1, 4096, 0 <unfinished ...>\n'
        '7 <... preadv2 resumed>[{iov_base="L"..., iov_len=9216}], 1, 2097152, 0) = 9216\n'
        "8 <... pwritev2 resumed>) = 512\n"
        "7 futex(0x1, FUTEX_WAKE, 1) = 0\n"
    )
    assert parse_trace(text) == [
        IoCall("read", 0, 8192), IoCall("write", 4096, 512), IoCall("read", 2097152, 9216),
    ]


def test_parse_trace_aio_iocbs() -> None:
    text = (
        "9 io_submit(0x7f, 2, [{aio_data=0, aio_lio_opcode=IOCB_CMD_PREAD, aio_fildes=10, "
        "aio_buf=0x7e, aio_nbytes=1048576, aio_offset=0}, {aio_data=0, "
        'aio_lio_opcode=IOCB_CMD_PWRITE, aio_fildes=10, aio_buf="}"..., aio_nbytes=512, '
        "aio_offset=1048576}]) = 2\n"
        "9 io_getevents(0x7f, 1, 1, [{data=0, obj=0x1, res=512, res2=0}], NULL) = 1\n"
    )
    assert parse_trace(text) == [IoCall("read", 0, 1048576), IoCall("write", 1048576, 512)]
    assert str(parse_trace(text)[0]) == "read 1048576 B at 0"
