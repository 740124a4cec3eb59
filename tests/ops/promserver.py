"""A real Prometheus server for tests: Debian's ``prometheus`` bound to 127.0.0.1 on a free port,
its data and config in a directory the caller owns, stopped (TERM, then KILL) on exit.

The alert rules are loaded with every ``for:`` shortened (:func:`fast_rules`) so that an alert
can fire within seconds; the expressions themselves are the shipped ones.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus" / "alerts.yml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_rules(text: str, for_: str = "3s") -> str:
    """The rules with every ``for:`` duration replaced by ``for_`` (the e2e test's variant)."""
    out, n = re.subn(r"(?m)^(\s+for:\s*)\S+$", rf"\g<1>{for_}", text)
    assert n > 0, "no 'for:' in the rules"
    return out


class Prometheus:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, directory: Path) -> None:
        self.proc, self.url, self.directory = proc, url, directory

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (``resultType`` must be vector)."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Any]:
        data = self.api("/api/v1/query_range", query=expr, start=str(start), end=str(end),
                        step=str(step))
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("/api/v1/alerts")["alerts"])

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts()
                if a["labels"]["alertname"] == name and a["state"] == "firing"]

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")[-4000:]


@contextmanager
def prometheus(directory: Path, targets: list[str], *, interval: str = "1s",
               job: str = "autoextend") -> Iterator[Prometheus]:
    """Run Prometheus scraping ``targets`` (host:port) every ``interval`` with the fast rules.

    ``directory`` holds config, rules, TSDB and log; it is removed on exit (even on failure).
    """
    binary = shutil.which("prometheus")
    assert binary is not None, "prometheus missing: apt-get install prometheus (make setup does)"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "alerts.yml").write_text(fast_rules(RULES.read_text()))
    (directory / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "rule_files": [str(directory / "alerts.yml")],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (directory / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=info"],
            stdout=log, stderr=subprocess.STDOUT)
    server = Prometheus(proc, url, directory)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"prometheus exited: {server.log()}"
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready: {server.log()}"
            time.sleep(0.2)  # poll with a deadline until Prometheus is ready
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


async def prom_until(prom: Prometheus, cond: Callable[[Prometheus], Any], timeout: float,  # noqa: ASYNC109
                     what: str) -> Any:
    """Poll ``cond(prom)`` (in a worker thread) until truthy; fail naming ``what``."""
    with anyio.move_on_after(timeout):
        while True:
            found = await anyio.to_thread.run_sync(cond, prom)
            if found:
                return found
            await anyio.sleep(0.5)  # poll with a deadline (each look is a Prometheus query)
    raise AssertionError(f"{what}: not within {timeout} s; alerts: {prom.alerts()}\n{prom.log()}")
