"""The lab's QMP connect retries a handshake that failed for a reason a new connection
cures: here, a first connection that is sent a leftover event before any greeting (what
QEMU can send a client that connects right after another one left, under load)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from anyio.abc import SocketStream

from autoextend.lab.qemu import connect_qmp, retried

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": []}}


async def test_a_connection_sent_something_else_first_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    connections = 0

    async def serve(stream: SocketStream) -> None:
        nonlocal connections
        connections += 1
        async with stream:
            if connections == 1:  # the last client's event, before any greeting
                await stream.send(b'{"event": "STOP", "timestamp": {"seconds": 1, '
                                  b'"microseconds": 0}}\r\n')
                await anyio.sleep(5)  # time is the subject: the client must not wait on it
                return
            await stream.send(json.dumps(GREETING).encode() + b"\r\n")
            buffer = ""
            decoder = json.JSONDecoder()
            while True:
                try:
                    buffer += (await stream.receive()).decode()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                while buffer.strip():  # a client sends one JSON object after another
                    try:
                        request, end = decoder.raw_decode(buffer.lstrip())
                    except json.JSONDecodeError:
                        break
                    buffer = buffer.lstrip()[end:]
                    reply = {"return": {}, "id": request.get("id")}
                    await stream.send(json.dumps(reply).encode() + b"\r\n")

    listener = await anyio.create_unix_listener(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        client = await connect_qmp(str(path), "test", timeout=10.0)
        try:
            assert await client.execute("query-status") == {}
        finally:
            await client.disconnect()
        tg.cancel_scope.cancel()
    assert connections == 2


def test_only_transient_handshake_failures_are_retried() -> None:
    for transient in (ConnectionRefusedError(), FileNotFoundError(), ConnectionResetError(),
                      EOFError(), TimeoutError()):
        assert retried(transient), transient
    for lasting in (PermissionError(), ValueError("bad path"), OSError(36, "name too long")):
        assert not retried(lasting), lasting
