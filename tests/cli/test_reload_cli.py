"""``config check`` shows what a SIGHUP would do, in the same lines the service logs; ``config
reload`` is a SIGHUP over the control socket, and ``--confirm`` applies a held-back one.
A real ``autoextend run`` (loop volumes, no VMs)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autoextend.lab.jsonlog import json_records

from .clirun import autoextend

FULL = """\
[service]
hypervisor = "qmp"
control_socket = "{d}/ctl.sock"
[qmp]
socket_glob = "{d}/qmp/*.sock"
[volumes]
backend = "loop"
loop_root = "{d}/volumes"
[resume]
policy = "leave"
[policy]
chunk_mib = 128
utilization_percent = 50
[[policy.overrides]]
vg = "demo"
chunk_mib = 64
"""
HELD = "config reload held back until confirmed; keeping the running config"


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    cfg: Path
    log: Path
    text: str

    def records(self) -> list[dict[str, Any]]:
        return json_records(self.log)

    def status(self) -> dict[str, Any]:
        result = autoextend("--config", str(self.cfg), "status", "--json")
        assert result.code == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    cfg = tmp_path / "autoextend.toml"
    text = FULL.format(d=tmp_path)
    cfg.write_text(text)
    log = tmp_path / "service.log"
    with log.open("w") as err:
        # --log-format json on the service's command line, as the systemd unit has it: the
        # comparison must not see it as a change (config check runs without it).
        proc = subprocess.Popen([sys.executable, "-m", "autoextend", "--config", str(cfg),
                                 "--log-format", "json", "run"],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while autoextend("--config", str(cfg), "status").code != 0:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the service never answered"
            time.sleep(0.1)  # poll with a deadline (a sync fixture)
        yield Running(proc, cfg, log, text)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(cond: Any, what: str) -> Any:
    deadline = time.monotonic() + 60
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # poll with a deadline (a sync test)
    return value


def test_config_check_prints_the_lines_a_sighup_logs_and_reload_confirm_applies(
    running: Running,
) -> None:
    assert autoextend("--config", str(running.cfg), "config", "check").stdout == (
        "config ok\nsame as the running config: a reload changes nothing\n")
    # The file, cut before its [policy] section (an editor half-way through a save).
    running.cfg.write_text(running.text[: running.text.index("[policy]")])
    check = autoextend("--config", str(running.cfg), "config", "check")
    assert check.code == 0, check.stderr
    out = check.stdout.splitlines()
    assert out[0] == "config ok"
    shown = [line.strip() for line in out[2:-1]]
    assert out[-1].startswith("a reload would be held back until confirmed (4 held")
    running.proc.send_signal(signal.SIGHUP)
    (held,) = wait_for(lambda: [r for r in running.records() if r["event"] == HELD], "held")
    assert held["changes"] == shown == held["held"]  # the same lines, before and after
    assert shown[0] == "policy.chunk_mib: 128 -> 2560 (held: not in the file, so the default)"
    status = running.status()
    assert status["config"]["held"]["held_keys"][0] == "policy.chunk_mib"
    assert "RELOAD HELD" in autoextend("--config", str(running.cfg), "status").stdout

    # config reload with the file changed again: held again (exit 1, one line, the changes)
    running.cfg.write_text(running.text[: running.text.index("[resume]")])
    again = autoextend("--config", str(running.cfg), "config", "reload")
    assert again.code == 1
    assert again.error.startswith("autoextend: error: the reload is held back: 5 change(s)")
    assert "policy.chunk_mib: 128 -> 2560" in again.stdout
    # --confirm applies it
    confirmed = autoextend("--config", str(running.cfg), "config", "reload", "--confirm")
    assert confirmed.code == 0, confirmed.stderr
    assert confirmed.stdout.startswith("config reloaded: policy.chunk_mib,")
    status = running.status()
    assert status["config"]["held"] is None
    assert [r["event"] for r in running.records()].count("config reloaded") == 1


def test_a_second_sighup_with_the_same_file_confirms(running: Running) -> None:
    running.cfg.write_text(running.text.replace("chunk_mib = 128", "chunk_mib = 1024"))
    running.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: running.status()["config"]["held"], "the held reload")
    running.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: running.status()["config"]["reloads"] == 1, "the confirmed reload")
    (done,) = [r for r in running.records() if r["event"] == "config reloaded"]
    assert done["applied"] == ["policy.chunk_mib"]
    assert done["confirmed"] == ["policy.chunk_mib: 128 -> 1024 (held: moves more than x4)"]


def test_config_reload_without_a_service_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\ncontrol_socket = "{tmp_path}/none.sock"\n')
    result = autoextend("--config", str(cfg), "config", "reload")
    assert result.code == 1
    assert result.error.startswith("autoextend: error:") and "none.sock" in result.error
