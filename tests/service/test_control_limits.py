"""The control socket under hostile or buggy clients: bounded size, depth, clients and time,
and a client that sees something other than an autoextend reply prints one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from hypothesis import given
from hypothesis import strategies as st

from autoextend import control
from autoextend.boundedjson import TooDeep, check_depth, nesting_depth
from autoextend.errors import AutoextendError
from autoextend.lab.waiting import until
from tests.cli.clirun import autoextend


async def _status(request: dict[str, Any]) -> dict[str, Any]:
    return {"vms": [], "size": request.get("size")}


async def _big(request: dict[str, Any]) -> dict[str, Any]:
    n = int(request["n"])
    return {"items": ["x" * 100] * n}


async def _boom(request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("handler bug")


@asynccontextmanager
async def server(tmp_path: Path, **kwargs: Any) -> AsyncIterator[control.ControlServer]:
    srv = control.ControlServer(str(tmp_path / "ctl.sock"), **kwargs)
    srv.register("status", _status)
    srv.register("big", _big)
    srv.register("boom", _boom)
    async with anyio.create_task_group() as tg:
        await tg.start(srv.serve)
        yield srv
        tg.cancel_scope.cancel()


async def _raw(path: str, payload: bytes) -> dict[str, Any]:
    stream = await anyio.connect_unix(path)
    async with stream:
        await stream.send(payload)
        data = b""
        with anyio.fail_after(30):
            while not data.endswith(b"\n"):
                try:
                    data += await stream.receive()
                except anyio.EndOfStream:
                    break
    reply: dict[str, Any] = json.loads(data)
    return reply


def test_nesting_depth() -> None:
    assert nesting_depth(b'{"a": [1, {"b": "[[[["}]}') == 3
    assert nesting_depth(b'"\\"[[["') == 0
    assert nesting_depth(b"[" * 5000) == 5000
    check_depth(b"[" * 64 + b"]" * 64)
    with pytest.raises(TooDeep):
        check_depth(b"[" * 65 + b"]" * 65)
    # An unterminated string full of escaped quotes runs to the end (linear, not quadratic:
    # this took hours before), and an escaped backslash ends a string as JSON says.
    assert nesting_depth(b'"' + b'\\"' * 500_000 + b"[" * 100) == 0
    assert nesting_depth(b'["x\\\\", [1]]') == 2


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:', max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3),
    max_leaves=12,
)


@given(json_docs)
def test_nesting_depth_is_the_documents_depth(doc: object) -> None:
    assert nesting_depth(json.dumps(doc).encode()) == _depth(doc)


async def test_deep_request_is_refused_and_service_goes_on(tmp_path: Path) -> None:
    async with server(tmp_path) as srv:
        deep = b'{"command": "status", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
        reply = await _raw(srv.path, deep)
        assert reply["ok"] is False and "nested" in reply["error"]
        assert await control.call(srv.path, "status", size=1) == {"vms": [], "size": 1}
        assert srv.counters.failed == 1


async def test_oversized_request_is_refused(tmp_path: Path) -> None:
    async with server(tmp_path) as srv:
        huge = b'{"command": "status", "x": "' + b"a" * (control.MAX_REQUEST + 10) + b'"}\n'
        reply = await _raw(srv.path, huge)
        assert reply["ok"] is False and "too large" in reply["error"]
        assert (await control.call(srv.path, "status"))["vms"] == []


async def test_handler_bug_fails_that_request_only(tmp_path: Path) -> None:
    async with server(tmp_path) as srv:
        with pytest.raises(AutoextendError, match="internal error"):
            await control.call(srv.path, "boom")
        assert (await control.call(srv.path, "status"))["vms"] == []


async def test_silent_client_times_out(tmp_path: Path) -> None:
    async with server(tmp_path, client_timeout_s=0.3) as srv:
        stream = await anyio.connect_unix(srv.path)
        async with stream:
            with anyio.fail_after(30):
                reply = json.loads(await stream.receive())
        assert reply == {"ok": False, "error": "timed out"}
        assert (await control.call(srv.path, "status"))["vms"] == []


async def test_reply_of_any_size(tmp_path: Path) -> None:
    async with server(tmp_path) as srv:
        result = await control.call(srv.path, "big", n=200_000)  # about 21 MB of JSON
        assert len(result["items"]) == 200_000


async def test_excess_clients_are_refused_not_fatal(tmp_path: Path) -> None:
    async with server(tmp_path, max_clients=8) as srv:
        held: list[SocketStream] = []
        try:
            for _ in range(8):
                held.append(await anyio.connect_unix(srv.path))
            await until(lambda: srv.active == 8, 30, "8 clients served",
                        describe=lambda: srv.counters)
            with pytest.raises(AutoextendError, match="busy"):
                await control.call(srv.path, "status")
            assert srv.counters.refused >= 1
        finally:
            for s in held:
                await s.aclose()
        await until(lambda: srv.active == 0, 30, "every client gone",
                    describe=lambda: srv.counters)
        assert (await control.call(srv.path, "status"))["vms"] == []


_EMFILE_SERVER = textwrap.dedent("""
    import resource, sys, anyio
    from autoextend import control

    async def status(request):
        return {"vms": []}

    async def main():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        srv = control.ControlServer(sys.argv[1], max_clients=1000)
        srv.register("status", status)
        async with anyio.create_task_group() as tg:
            await tg.start(srv.serve)
            print("ready", flush=True)
            while srv.counters.accept_errors == 0:
                await anyio.sleep(0.05)  # polls its own counter (a child, not the test)
            print("emfile", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)
""")


async def test_out_of_file_descriptors_is_survived(tmp_path: Path) -> None:
    """200 clients held open against a server limited to 64 descriptors: accept fails with
    EMFILE, the server keeps running and serves again once the clients go away."""
    path = str(tmp_path / "ctl.sock")
    proc = subprocess.Popen([sys.executable, "-c", _EMFILE_SERVER, path],  # noqa: ASYNC220
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    held: list[SocketStream] = []
    try:
        assert proc.stdout is not None
        out = proc.stdout

        def wait_for(marker: str) -> None:
            for line in out:  # the server's log lines come on stdout too
                if line == marker + "\n":
                    return
            raise AssertionError(f"server ended before {marker!r}")

        await anyio.to_thread.run_sync(wait_for, "ready")
        for _ in range(200):
            held.append(await anyio.connect_unix(path))
        await anyio.to_thread.run_sync(wait_for, "emfile")
        for s in held:
            await s.aclose()
        held.clear()
        with anyio.fail_after(60):
            while True:
                try:
                    assert (await control.call(path, "status"))["vms"] == []
                    break
                except AutoextendError:  # still draining the backlog
                    await anyio.sleep(0.1)  # poll with a deadline (the call is async)
        assert proc.poll() is None
    finally:
        for s in held:
            await s.aclose()
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- the client side

# Not an autoextend reply at all: every command fails with one line.
GARBAGE = [
    b"[1, 2, 3]\n",
    b"not json at all\n",
    b"\n",
    b"",
    b'{"ok": "yes"}\n',
    b'{"ok": true, "result": [1, 2]}\n',
    b"[" * 100_000 + b"\n",
    b'{"ok": false, "error": {"nested": 1}}\n',
]
# A reply, but its result has an unexpected shape: the readable forms fail with one line,
# (``--json`` prints what came), never a traceback.
ODD = [
    b'{"ok": true, "result": {"vms": [1, 2]}}\n',
    b'{"ok": true, "result": {"vms": [{"vm": "a", "drives": [{"drive": {}}]}]}}\n',
    b'{"ok": true, "result": {"spm": {"host_id": 1}}}\n',
    b'{"ok": true, "result": {"spm": [1]}}\n',
]
WRONG_ANSWERS = [(a, True) for a in GARBAGE] + [(a, False) for a in ODD]


@pytest.mark.parametrize(("answer", "garbage"), WRONG_ANSWERS,
                         ids=[a[:24].decode() for a, _ in WRONG_ANSWERS])
@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["spm", "status"],
                                     ["spm", "step-down"]])
async def test_status_client_with_wrong_answer_prints_one_line(
    tmp_path: Path, answer: bytes, garbage: bool, command: list[str]
) -> None:
    path = str(tmp_path / "fake.sock")
    listener = await anyio.create_unix_listener(path)

    async def answer_with(stream: SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(answer)

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\ncontrol_socket = "{path}"\n')
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, answer_with)
        proc = await anyio.to_thread.run_sync(lambda: autoextend(
            "--config", str(cfg), *command, env={**os.environ, "COLUMNS": "200"}))
        tg.cancel_scope.cancel()
    err = proc.stderr
    assert "Traceback" not in err
    if proc.code == 0:  # an odd result may still be printable (--json, missing keys)
        assert not garbage, proc.stdout
        assert proc.stdout and not err
        return
    assert proc.code == 1, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("autoextend: error:")
