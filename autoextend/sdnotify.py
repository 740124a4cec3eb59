"""systemd notification protocol (sd_notify), without libsystemd.

``READY=1`` once the service is up, ``STATUS=...`` one-line summaries, ``WATCHDOG=1`` from the
event loop itself (a blocked loop stops the pings and systemd's watchdog fires), and
``STOPPING=1`` on shutdown. Does nothing when ``NOTIFY_SOCKET`` is unset.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import anyio

from autoextend.clock import Clock
from autoextend.logs import get_logger

log = get_logger("sdnotify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s: float | None = None
        self.dropped = 0  # messages dropped because the manager's queue was full
        self._dropping = False
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> None:
        """Send ``KEY=value`` lines in one datagram. Never raises and never blocks.

        The socket is non-blocking: a datagram socket whose reader has fallen behind (its queue
        is only ``net.unix.max_dgram_qlen`` datagrams, 10 by default) would otherwise block
        the sender, and the sender is the event loop: every extension would stop behind a
        service manager that does not read. A message that does not fit is dropped and
        counted (``dropped``); the first of a run of drops is logged.
        """
        if not self.address:
            return
        payload = "\n".join(fields).encode()
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.connect(self.address)
                sock.send(payload)
        except BlockingIOError:
            self.dropped += 1
            if not self._dropping:
                log.warning("sd_notify queue full; message dropped (the service manager is "
                            "not reading its notify socket)", message=fields[0])
            self._dropping = True
            return
        except OSError as exc:
            log.warning("sd_notify failed", error=str(exc))
            return
        self._dropping = False

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    async def watchdog_loop(self, clock: Clock) -> None:
        """Ping the watchdog from the event loop; a blocked loop stops the pings."""
        if self.watchdog_interval_s is None or not self.address:
            await anyio.sleep_forever()
            return
        while True:
            self.notify("WATCHDOG=1")
            await clock.sleep(self.watchdog_interval_s)
