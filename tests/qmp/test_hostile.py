"""A misbehaving QEMU ends its own session only: each hostile reply shape (fake QEMU serving
bent recordings of a real one) is refused by the decoders, the session is dropped, counted and
retried with backoff, while an honest VM beside it is served throughout."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from hostile_qmp import HostileQemu, Shape, hostile_qemus
from qmp_testlab import drained

from autoextend.clock import MonotonicClock
from autoextend.lab.waiting import until
from autoextend.monitor.protocols import DriveInfo, HypervisorEvent, ThresholdCrossed, VmAppeared
from autoextend.qmp.config import QmpSettings
from autoextend.qmp.errors import QmpError
from autoextend.qmp.hypervisor import QmpHypervisor
from autoextend.qmp.replies import MAX_SIZE
from autoextend.volumes import VolumeRef

MiB = 1 << 20

# (shape, honest answers first): NUL_IN_FILENAME turns bad between two queries.
FAILING = [
    (Shape.HUGE_VIRTUAL_SIZE, 0),
    (Shape.HUGE_PHYSICAL, 0),
    (Shape.NEGATIVE_OFFSET, 0),
    (Shape.NUL_IN_FILENAME, 1),
    (Shape.DEEP_REPLY, 0),
    (Shape.HUGE_INTEGER, 0),
    (Shape.NOT_JSON, 0),
    (Shape.WRONG_TYPES, 0),
]


async def drive(hv: QmpHypervisor, vm: str, name: str) -> DriveInfo:
    (found,) = [d for d in await hv.drives(vm) if d.drive == name]
    return found


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aeh-", dir="/tmp") as d:
        yield Path(d)


def settings(directory: Path) -> QmpSettings:
    return QmpSettings(socket_glob=str(directory / "*.sock"), rescan_interval_s=0.2,
                       connect_timeout_s=3.0, command_timeout_s=5.0,
                       reconnect_initial_s=0.05, reconnect_max_s=0.4)


@pytest.mark.parametrize(("shape", "after"), FAILING, ids=[s.value for s, _ in FAILING])
async def test_hostile_vm_fails_alone(workdir: Path, shape: Shape, after: int) -> None:
    device = workdir / "volume"
    device.write_bytes(b"")
    with device.open("r+b") as f:
        f.truncate(64 * MiB)
    sockets = workdir / "qmp"
    sockets.mkdir()

    def lookup(path: str) -> VolumeRef | None:
        return VolumeRef("vg", "lv") if path == str(device) else None

    hv = QmpHypervisor(settings(sockets), lookup, MonotonicClock())
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](10_000)
    async with hostile_qemus(sockets, str(device), [(Shape.HONEST, 0), (shape, after)]) as fakes:
        honest, hostile = fakes
        with send, receive:
            async with anyio.create_task_group() as tg:
                await tg.start(hv.run, send)
                with anyio.fail_after(60):
                    # retried with backoff, again and again, each time counted
                    while hv.session_failures < 3 or hostile.connections < 3:
                        await anyio.sleep(0.05)  # poll with a deadline; each looks again
                        if hostile.name in hv.vms():
                            try:
                                drives = await hv.drives(hostile.name)
                            except QmpError:
                                continue
                            for d in drives:  # whatever came through is in range
                                assert 0 <= d.capacity <= MAX_SIZE
                                assert "\x00" not in d.path
                        vda = await drive(hv, honest.name, "vda")
                        assert vda.path == str(device) and vda.physical == 64 * MiB
                assert honest.name in hv.vms()
                vda = await drive(hv, honest.name, "vda")
                assert vda.capacity == 1 << 30
                appeared = [e.vm for e in drained(receive) if isinstance(e, VmAppeared)]
                assert appeared.count(honest.name) == 1
                tg.cancel_scope.cancel()


async def test_out_of_range_event_is_ignored(workdir: Path) -> None:
    device = workdir / "volume"
    device.write_bytes(b"\0" * MiB)
    sockets = workdir / "qmp"
    sockets.mkdir()
    hv = QmpHypervisor(settings(sockets), lambda p: None, MonotonicClock())
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](10_000)
    async with hostile_qemus(sockets, str(device), [(Shape.HUGE_EVENT, 0)]) as fakes:
        (fake,) = fakes
        with send, receive:
            async with anyio.create_task_group() as tg:
                await tg.start(hv.run, send)
                with anyio.fail_after(60):
                    while fake.counts.get("query-block", 0) < 5:  # several events sent
                        await anyio.sleep(0.05)  # poll with a deadline; each asks again
                        await hv.drives(fake.name)
                events = drained(receive)
                assert not [e for e in events if isinstance(e, ThresholdCrossed)]
                assert fake.name in hv.vms() and fake.connections == 1
                assert hv.malformed_events >= 1
                assert hv.session_failures == 0
                tg.cancel_scope.cancel()


def test_recorded_shapes_stay_real() -> None:
    """The honest fake answers exactly the recording (the test's baseline is real QEMU)."""
    fake = HostileQemu(Path("/nonexistent"), "/dev/x", Shape.HONEST, "h")
    block = fake.answer("query-block", {})
    assert isinstance(block, list) and len(block) == 5


class RecordingClock:
    """Real time, but sleeps are taken short and remembered, so backoff can be checked
    without timing anything."""

    def __init__(self) -> None:
        self.real = MonotonicClock()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.real.now()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await anyio.sleep(min(seconds, 0.02))  # time is the subject: backoff, taken short


@pytest.mark.parametrize("shape", [Shape.HUGE_VIRTUAL_SIZE, Shape.DEEP_REPLY])
async def test_failing_sessions_back_off(workdir: Path, shape: Shape) -> None:
    device = workdir / "volume"
    device.write_bytes(b"\0" * MiB)
    sockets = workdir / "qmp"
    sockets.mkdir()
    clock = RecordingClock()
    s = settings(sockets).model_copy(update={"rescan_interval_s": 600.0})
    hv = QmpHypervisor(s, lambda p: None, clock)
    send, receive = anyio.create_memory_object_stream[HypervisorEvent](10_000)
    async with hostile_qemus(sockets, str(device), [(shape, 0)]):
        with send, receive:
            async with anyio.create_task_group() as tg:
                await tg.start(hv.run, send)
                await until(lambda: hv.session_failures >= 6, 60, "6 failed sessions",
                            describe=lambda: clock.sleeps)
                tg.cancel_scope.cancel()
    backoffs = [x for x in clock.sleeps if x != 600.0][:6]
    assert backoffs == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
