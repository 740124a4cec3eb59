"""Count the I/O a running process issues over a time window, the same way for any process.

Used by the lease benchmark to put our lease worker and the sanlock daemon side by side.
``strace -f`` records every storage call with its offset and length: ``preadv2``/``pwritev2``
for ours, the iocbs of ``io_submit`` for sanlock (Linux AIO). ``/proc/PID/io`` gives the bytes
that reached the block layer as a cross-check (O_DIRECT I/O is counted there too).
A renewal is recognised as a read of the whole host id area (offset and length given).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

TRACED = "io_submit,pread64,pwrite64,preadv,pwritev,preadv2,pwritev2"
_AIO = re.compile(r"aio_lio_opcode=IOCB_CMD_(PREAD|PWRITE)\b.*?aio_nbytes=(\d+), "
                  r"aio_offset=(\d+)")
_VECTOR = re.compile(r"(p(?:read|write)v2?)\b.*?iov_len=(\d+)\}\], \d+, (\d+)")
_PLAIN = re.compile(r"(p(?:read|write)64)\b.*?, (\d+), (\d+)\)")


@dataclass(frozen=True)
class IoCall:
    op: str        # "read" or "write"
    offset: int
    length: int

    def __str__(self) -> str:
        return f"{self.op} {self.length} B at {self.offset}"


def parse_trace(text: str) -> list[IoCall]:
    """Storage calls in ``strace -f`` output (split unfinished/resumed lines included)."""
    calls: list[IoCall] = []
    for line in text.splitlines():
        if "io_submit" in line:
            for iocb in line.split("aio_data=")[1:]:
                found = _AIO.search(iocb)
                if found is not None:
                    op = "read" if found.group(1) == "PREAD" else "write"
                    calls.append(IoCall(op, int(found.group(3)), int(found.group(2))))
            continue
        match = _VECTOR.search(line) or _PLAIN.search(line)
        if match is not None:
            op = "read" if "read" in match.group(1) else "write"
            calls.append(IoCall(op, int(match.group(3)), int(match.group(2))))
    return calls


def proc_io(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = int(value)
    return values


def io_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in ("read_bytes", "write_bytes")}


async def trace_io(pid: int, seconds: float, out: Path) -> list[IoCall] | str:
    """Storage calls of ``pid`` (all threads) during ``seconds``; a reason if impossible."""
    if shutil.which("strace") is None:
        return "strace is not installed"
    tracer = await anyio.open_process(
        ["strace", "-f", "-qq", "-s", "1", "-e", f"trace={TRACED}", "-o", str(out),
         "-p", str(pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await anyio.sleep(seconds)
    finally:
        with anyio.CancelScope(shield=True):
            if tracer.returncode is None:
                tracer.send_signal(signal.SIGINT)  # detach
            with anyio.move_on_after(10):
                await tracer.wait()
            if tracer.returncode is None:
                tracer.kill()
                await tracer.wait()
    trace = anyio.Path(out)
    return parse_trace(await trace.read_text() if await trace.exists() else "")


async def io_window(pid: int, out: Path, seconds: float,
                    renewal_read: tuple[int, int]) -> dict[str, Any]:
    """Trace ``pid`` for ``seconds``: calls by kind, calls per second, and per renewal (a
    read of ``renewal_read`` = (offset, length))."""
    before = proc_io(pid)
    calls = await trace_io(pid, seconds, out)
    window: dict[str, Any] = {"window_s": seconds, "proc_io": io_delta(before, proc_io(pid))}
    if isinstance(calls, str):
        window["not_measured"] = calls
        return window
    window["io_calls"] = {str(call): n for call, n in sorted(
        Counter(calls).items(), key=lambda item: (item[0].offset, item[0].op))}
    window["io_calls_per_s"] = round(len(calls) / seconds, 3)
    renewals = sum(1 for c in calls if c.op == "read" and (c.offset, c.length) == renewal_read)
    window["renewals"] = renewals
    if renewals:
        reads = [c for c in calls if c.op == "read"]
        writes = [c for c in calls if c.op == "write"]
        window["per_renewal"] = {
            "reads": round(len(reads) / renewals, 2), "writes": round(len(writes) / renewals, 2),
            "read_bytes": round(sum(c.length for c in reads) / renewals),
            "write_bytes": round(sum(c.length for c in writes) / renewals),
        }
    return window
