"""The real service with a real guest that keeps writing and being extended, beside hostile
input: a flood of misbehaving control-socket clients, and fake QEMUs whose QMP replies are
out of range, gain NUL bytes or nest 100,000 deep. Neither stops the service, the monitor or
the extensions; each bad peer is refused, counted and (for QEMU) retried."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from autoextend import control
from autoextend.errors import AutoextendError
from autoextend.lab.guest import GuestJob
from autoextend.lab.singlehost import lab_host
from autoextend.lab.waiting import until
from autoextend.monitor.observer import Tally

sys.path.insert(0, str(Path(__file__).parent.parent / "qmp"))
from hostile_qmp import Shape, hostile_qemus  # noqa: E402

pytestmark = pytest.mark.slow
MiB = 1 << 20

# A separate process (its own descriptors) that, round after round until killed: holds 1,100
# connections open, sends a 5,000-deep request, an oversized one, garbage, and half a line.
FLOOD = textwrap.dedent("""
    import socket, sys, time
    path = sys.argv[1]
    payloads = [
        b'{"command": "status", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}\\n",
        b'{"command": "status", "x": "' + b"a" * 100_000 + b'"}\\n',
        b"\\xff\\xfe garbage\\n",
        b'{"command": "stat',
        b'{"command": "nope"}\\n',
    ]
    rounds = 0
    while True:
        held = []
        for i in range(1100):
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            try:
                s.connect(path)
                if i % 50 == 0:
                    s.sendall(payloads[(i // 50) % len(payloads)])
            except OSError:
                s.close()
                continue
            held.append(s)
        time.sleep(0.5)  # time is the subject: the flood is held open a while
        for s in held:
            s.close()
        rounds += 1
        print("round", rounds, flush=True)
""")


async def test_client_flood_beside_a_guest_being_extended(lab_tmp_path: Path) -> None:
    tally = Tally()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=32) as host:
        path = host.settings.service.control_socket
        counters = host.service.control.counters
        # 96 MiB at 4 MiB/s in 32 MiB chunks: two extensions while the flood runs.
        guest = await host.start_guest("vm1", GuestJob(mib=96, rate_kib_s=4096),
                                       start_mib=64, virtual_mib=512)
        flood = await anyio.open_process([sys.executable, "-c", FLOOD, path],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            result = await guest.vm.result(timeout=600)
            await until(lambda: counters.refused > 0 and counters.failed > 10, 120,
                        "the flood reached the service")
        finally:
            flood.kill()
            await flood.wait()
        assert result.verified
        during = tally.extends
        assert during >= 2
        # Still serving: status through the socket, and the CLI.
        with anyio.fail_after(60):
            while True:
                try:
                    status = await control.call_dict(path, "status")
                    break
                except AutoextendError:
                    await anyio.sleep(0.2)  # the flood's last clients are still draining
        assert "vms" in status
        # Still extending: a second guest fills and is extended after the flood.
        second = await host.start_guest("vm2", GuestJob(mib=128), start_mib=64,
                                        virtual_mib=512)
        assert (await second.vm.result(timeout=600)).verified
        assert tally.extends > during
        assert counters.accept_errors == 0 or counters.served > 0


FAILING = [
    (Shape.HUGE_VIRTUAL_SIZE, 0),
    (Shape.NUL_IN_FILENAME, 1),
    (Shape.DEEP_REPLY, 0),
    (Shape.HUGE_INTEGER, 0),
    (Shape.NEGATIVE_OFFSET, 0),
]


async def test_hostile_qemus_beside_a_guest_being_extended(lab_tmp_path: Path) -> None:
    tally = Tally()
    async with lab_host(workdir=lab_tmp_path, observer=tally, chunk_mib=64) as host:
        _, device = await host.create_disk("hostile-disk", 64, 512)
        names = {shape: f"h{i}" for i, (shape, _) in enumerate(FAILING)}
        async with hostile_qemus(host.workdir / "qmp", device,
                                 [*FAILING, (Shape.HUGE_EVENT, 0)],
                                 name=lambda s: names.get(s, "hevent")) as fakes:
            guest = await host.start_guest("vm1", GuestJob(mib=192), start_mib=64,
                                           virtual_mib=512)
            hv = host.service.hypervisor
            failing = fakes[:len(FAILING)]
            await until(lambda: all(f.connections >= 2 for f in failing), 300,
                        "every hostile QEMU was retried")
            await until(lambda: getattr(hv, "session_failures", 0) >= 2 * len(FAILING), 300,
                        "every retry failed too, and was counted")
            assert (await guest.vm.result(timeout=600)).verified
            assert tally.extends >= 2
            # The one sending out-of-range events stays connected; its events are ignored.
            assert fakes[-1].connections == 1
            snapshot = {v["vm"]: v for v in host.service.monitor.snapshot()}
            for vm in snapshot.values():
                for d in vm["drives"]:
                    assert 0 <= d.get("capacity", 0) < 1 << 63
            # The service is still serving.
            status = await control.call_dict(host.settings.service.control_socket, "status")
            json.dumps(status)
