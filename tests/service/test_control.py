"""The control socket: request/response, permissions, and a clear error when nothing runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend import control
from autoextend.errors import AutoextendError, ServiceNotRunning


async def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")
    server = control.ControlServer(path)

    async def status(request: dict[str, Any]) -> dict[str, Any]:
        return {"vms": [], "echo": request.get("x")}

    server.register("status", status)
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert await control.call(path, "status", x=5) == {"vms": [], "echo": 5}
        with pytest.raises(AutoextendError, match="unknown command"):
            await control.call(path, "nope")
        # Garbage from a client gets an error reply, and the server keeps serving.
        stream = await anyio.connect_unix(path)
        async with stream:
            await stream.send(b"{not json\n")
            reply = await stream.receive()
        assert b'"ok": false' in reply
        assert (await control.call(path, "status"))["vms"] == []
        tg.cancel_scope.cancel()
    assert not os.path.exists(path)


async def test_not_running(tmp_path: Path) -> None:
    with pytest.raises(ServiceNotRunning, match="not running"):
        await control.call(str(tmp_path / "absent.sock"), "status")


def test_status_cli_when_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\ncontrol_socket = "{tmp_path / "absent.sock"}"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "autoextend", "--config", str(cfg), "status", "--json"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 1
    assert "not running" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
