"""A fake QEMU on a QMP unix socket that answers from the recorded replies of a real QEMU 7.2
(``data/q35_mixed.json``), bent into a hostile shape: the fault injection for the backend's
per-VM isolation tests. Real QEMU serves the healthy VMs beside it.

``Shape`` names what goes wrong; ``after`` makes the first ``after`` answers of the shaped
command honest, so a value can change between two queries (a NUL byte appearing in a
filename the backend already knows).
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream

RECORDED: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "q35_mixed.json").read_text())
GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                "package": "hostile"}, "capabilities": []}}


class Shape(Enum):
    HONEST = "honest"
    HUGE_VIRTUAL_SIZE = "huge-virtual-size"      # qcow2 virtual-size 2**80
    HUGE_PHYSICAL = "huge-physical"              # protocol node size 2**64
    NEGATIVE_OFFSET = "negative-offset"          # wr_highest_offset -1
    NUL_IN_FILENAME = "nul-in-filename"          # image.filename gains a NUL byte
    DEEP_REPLY = "deep-reply"                    # query-block nested 100,000 deep
    HUGE_INTEGER = "huge-integer"                # a 5,000-digit integer (json ValueError)
    NOT_JSON = "not-json"                        # a line of garbage
    WRONG_TYPES = "wrong-types"                  # query-block is an object, not a list
    HUGE_EVENT = "huge-event"                    # BLOCK_WRITE_THRESHOLD with 2**70


def recorded(device: str) -> dict[str, Any]:
    """The recorded replies, with the writable qcow2 drive (vda, prot0) on ``device`` and
    every other device path pointing nowhere."""
    data = copy.deepcopy(RECORDED)
    text = json.dumps(data)
    for role, path in RECORDED["devices"].items():
        text = text.replace(json.dumps(path), json.dumps(device if role == "rw" else
                                                         f"/nonexistent/{role}"))
    replies: dict[str, Any] = json.loads(text)
    return replies


def _prot0(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return next(n for n in nodes if n["node-name"] == "prot0")


def _vda(block: list[dict[str, Any]]) -> dict[str, Any]:
    return next(b for b in block if b.get("qdev", "").startswith("/machine/peripheral/vda/"))


@dataclass
class HostileQemu:
    """Serves one client at a time, forever, on ``path``."""

    path: Path
    device: str
    shape: Shape
    name: str
    after: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    connections: int = 0

    def answer(self, command: str, arguments: dict[str, Any]) -> bytes | Any:
        """The ``return`` value (or raw bytes to send as the whole line)."""
        n = self.counts[command] = self.counts.get(command, 0) + 1
        replies = recorded(self.device)
        if command == "query-name":
            return {"name": self.name}
        if command in ("qmp_capabilities", "block-set-write-threshold", "cont"):
            return {}
        if command == "query-block-jobs":
            return []  # no block job runs (what QEMU answers then)
        if command not in replies:
            return {}
        value = replies[command]
        if n <= self.after:
            return value
        shape = self.shape
        if command == "query-block":
            if shape is Shape.HUGE_VIRTUAL_SIZE:
                _vda(value)["inserted"]["image"]["virtual-size"] = 1 << 80
            elif shape is Shape.DEEP_REPLY:
                return b"[" * 100_000 + b"]" * 100_000
            elif shape is Shape.HUGE_INTEGER:
                return b'{"return": [' + b"9" * 5000 + b"]}"
            elif shape is Shape.NOT_JSON:
                return b"\x00\xff this is not json {{{"
            elif shape is Shape.WRONG_TYPES:
                return {"device": "vda"}
        if command == "query-named-block-nodes":
            if shape is Shape.NUL_IN_FILENAME:
                prot = _prot0(value)
                prot["image"]["filename"] += "\x00"
                prot["file"] += "\x00"
            elif shape is Shape.HUGE_PHYSICAL:
                _prot0(value)["image"]["virtual-size"] = 1 << 64
        if command == "query-blockstats" and shape is Shape.NEGATIVE_OFFSET:
            for entry in value:
                entry["stats"]["wr_highest_offset"] = -1
        return value

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_unix_listener(self.path)
        async with listener:
            task_status.started()
            await listener.serve(self._client)

    async def _client(self, stream: SocketStream) -> None:
        self.connections += 1
        async with stream:
            try:
                await stream.send(json.dumps(GREETING).encode() + b"\n")
                buf = ""
                decoder = json.JSONDecoder()
                while True:
                    # QMP is a stream of JSON values, not lines (qemu.qmp sends no newline).
                    while True:
                        buf = buf.lstrip()
                        try:
                            request, end = decoder.raw_decode(buf)
                            break
                        except json.JSONDecodeError:
                            buf += (await stream.receive()).decode()
                    buf = buf[end:]
                    reply = self.answer(request.get("execute", ""),
                                        request.get("arguments") or {})
                    if isinstance(reply, bytes):
                        data = reply
                    else:
                        body = {"return": reply}
                        if "id" in request:
                            body["id"] = request["id"]
                        data = json.dumps(body).encode()
                    await stream.send(data + b"\n")
                    if self.shape is Shape.HUGE_EVENT and request.get("execute") == "query-block":
                        event = {"event": "BLOCK_WRITE_THRESHOLD", "timestamp": {
                            "seconds": 1, "microseconds": 0}, "data": {
                            "node-name": "prot0", "write-threshold": 1 << 70,
                            "amount-exceeded": 1 << 70}}
                        await stream.send(json.dumps(event).encode() + b"\n")
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                return


@asynccontextmanager
async def hostile_qemus(
    directory: Path, device: str, shapes: list[tuple[Shape, int]],
    name: Callable[[Shape], str] = lambda s: f"hostile-{s.value}",
) -> AsyncIterator[list[HostileQemu]]:
    """One fake QEMU per (shape, after), with sockets ``<directory>/<name>.sock``."""
    fakes = [HostileQemu(directory / f"{name(shape)}.sock", device, shape, name(shape), after)
             for shape, after in shapes]
    async with anyio.create_task_group() as tg:
        for fake in fakes:
            await tg.start(fake.serve)
        try:
            yield fakes
        finally:
            tg.cancel_scope.cancel()
            for fake in fakes:
                fake.path.unlink(missing_ok=True)
