"""The lab is real: guests boot under TCG, write, verify, pause on ENOSPC and resume."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from qemu.qmp import QMPClient

from autoextend.lab import proc
from autoextend.lab.fixtures import QemuVmFactory, ThinVolumeFactory
from autoextend.lab.guest import GuestJob, Mode, expected_md5
from autoextend.lab.qemu import Drive, VmSpec

MiB = 1 << 20
pytestmark = pytest.mark.slow


async def test_guest_writes_256_mib_and_verifies(
    thin_volume: ThinVolumeFactory, qemu_vm: QemuVmFactory
) -> None:
    vol = await thin_volume(size=320 * MiB, virtual_size=1 << 30)
    job = GuestJob(mib=256, seed=11)
    vm = await qemu_vm([vol], job)
    result = await vm.result(timeout=240)
    assert result.verified, result
    assert result.written_mib == 256 and result.error == ""
    assert result.md5 == result.expected_md5 == expected_md5(job)
    assert await vm.wait_exit(30) == 0
    check = await vol.check()
    assert check.clean
    # 256 MiB of data really allocated in the qcow2 (plus metadata)
    assert check.image_end_offset >= 256 * MiB


async def _listed(client: QMPClient, command: str) -> list[dict[str, Any]]:
    """A QMP command's reply that is a list of objects."""
    reply = await client.execute(command)
    assert isinstance(reply, list)
    return reply


async def _wait_event(events: Any, name: str) -> dict[str, Any]:
    async for event in events:
        if event["event"] == name:
            return dict(event["data"]) if "data" in event else {}
    raise AssertionError(f"event stream ended before {name}")


async def test_guest_pauses_on_enospc_and_resumes_after_grow(
    thin_volume: ThinVolumeFactory, qemu_vm: QemuVmFactory
) -> None:
    vol = await thin_volume(size=64 * MiB, virtual_size=1 << 30)
    job = GuestJob(mib=96, seed=5)
    vm = await qemu_vm([vol], job, paused=True)
    client = await vm.connect_qmp("test")
    try:
        with client.listener() as events:
            await client.execute("cont")
            with anyio.fail_after(120):
                error = await _wait_event(events, "BLOCK_IO_ERROR")
            assert error["nospace"] is True
            assert error["operation"] == "write" and error["action"] == "stop"
            status = await client.execute("query-status")
            assert isinstance(status, dict)
            assert status["status"] == "io-error" and status["running"] is False

            assert vm.returncode is None
            await vol.grow(by=64 * MiB)
            await client.execute("cont")
            with anyio.fail_after(30):
                await _wait_event(events, "RESUME")
    finally:
        with anyio.CancelScope(shield=True):
            await client.disconnect()
    result = await vm.result(timeout=240)
    assert result.verified, result
    assert result.written_mib == 96
    assert await vm.wait_exit(30) == 0
    assert (await vol.check()).clean


async def test_corrupted_read_back_fails_verification(
    thin_volume: ThinVolumeFactory, qemu_vm: QemuVmFactory
) -> None:
    vol = await thin_volume(size=64 * MiB, virtual_size=256 * MiB)
    written = await qemu_vm([vol], GuestJob(mib=16, seed=3), name="writer")
    assert (await written.result()).verified
    await written.wait_exit(30)

    # the guest regenerates the stream itself (no digest from the host) and finds it intact
    verify = GuestJob(mib=16, seed=3, mode=Mode.VERIFY)
    intact = await qemu_vm([vol], verify, name="verify1", precompute_md5=False)
    intact_result = await intact.result()
    await intact.wait_exit(30)
    assert intact_result.verified and intact_result.mode is Mode.VERIFY
    assert intact_result.written_mib == 0

    # the guest is gone; corrupt 4 KiB in the middle of its data through the qcow2 layer
    await proc.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 8M 4k", vol.device])
    corrupt = await qemu_vm([vol], verify, name="verify2", precompute_md5=False)
    result = await corrupt.result()
    assert not result.verified
    assert result.error == "mismatch"
    assert result.md5 != result.expected_md5 == intact_result.expected_md5


async def test_other_seed_or_offset_does_not_verify(
    thin_volume: ThinVolumeFactory, qemu_vm: QemuVmFactory
) -> None:
    vol = await thin_volume(size=64 * MiB, virtual_size=256 * MiB)
    vm = await qemu_vm([vol], GuestJob(mib=8, seed=1, offset_mib=4), name="w")
    assert (await vm.result()).verified
    await vm.wait_exit(30)
    for job in (GuestJob(mib=8, seed=2, mode=Mode.VERIFY),
                GuestJob(mib=8, seed=1, offset_mib=5, mode=Mode.VERIFY)):
        other = await qemu_vm([vol], job)
        assert not (await other.result()).verified
        await other.wait_exit(30)


async def test_rate_limited_write_on_second_drive(
    thin_volume: ThinVolumeFactory, qemu_vm: QemuVmFactory
) -> None:
    first = await thin_volume(size=16 * MiB, virtual_size=64 * MiB)
    second = await thin_volume(size=32 * MiB, virtual_size=64 * MiB)
    job = GuestJob(mib=6, rate_kib_s=3 * 1024, device="/dev/vdb")
    vm = await qemu_vm([first, second], job)
    result = await vm.result()
    assert result.verified
    assert result.write_s >= 1.5  # 6 MiB at 3 MiB/s takes about 2 s
    assert await vm.wait_exit(30) == 0
    assert (await second.check()).image_end_offset >= 6 * MiB
    assert (await first.check()).allocated_clusters == 0


@pytest.mark.parametrize("machine", ["none", "q35"])
async def test_guestless_instance_has_its_block_nodes(
    thin_volume: ThinVolumeFactory, qemu_vm: QemuVmFactory, machine: str
) -> None:
    vols = [await thin_volume(size=8 * MiB, virtual_size=64 * MiB) for _ in range(2)]
    drives = tuple(Drive.numbered(v.device, i) for i, v in enumerate(vols))
    vm = await qemu_vm.start(VmSpec(name=f"bare-{machine}", drives=drives, machine=machine,
                                    memory_mib=32, paused=True))
    async with vm.qmp() as client:
        nodes = {n["node-name"] for n in await _listed(client, "query-named-block-nodes")}
        assert {"file0", "fmt0", "file1", "fmt1"} <= nodes
        await client.execute("block-set-write-threshold",
                             {"node-name": "file1", "write-threshold": 4 * MiB})
        devices = {b["qdev"] for b in await _listed(client, "query-block") if b.get("qdev")}
        if machine == "q35":
            assert any(d.startswith("/machine/peripheral/vda") or d == "vda" for d in devices)
        else:
            assert devices == set()
