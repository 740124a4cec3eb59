"""Issue 14, give space back: a real guest writes 100 MiB into a volume that grew to 256 MiB
and shuts down; ``autoextend volume reduce`` (the CLI, against the running service) gives
the unused space back, ``qemu-img check`` stays clean, and a second boot reads the data
back intact. A reduce while the VM runs is refused with exit 1 and one line."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from autoextend import settings as settings_mod
from autoextend.capacity.figures import reduce_target
from autoextend.capacity.qcheck import check_image
from autoextend.lab.guest import GuestJob, Mode
from autoextend.lab.singlehost import LabHost, lab_host
from autoextend.lab.waiting import until

pytestmark = pytest.mark.slow
MiB = 1 << 20
CHUNK_MIB = 96


async def cli(host: LabHost, *args: str) -> tuple[int, str, str]:
    config = host.workdir / "autoextend.toml"
    if not config.exists():
        config.write_text(settings_mod.dump_toml(host.settings))
    result = await anyio.run_process(
        [sys.executable, "-m", "autoextend", "--config", str(config), "--log-format", "json",
         *args], check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def paused(host: LabHost, vm: str) -> object:
    for v in host.service.monitor.snapshot():
        if v["vm"] == vm:
            return v["paused"]
    return "gone"


async def test_reduce_after_clean_shutdown_and_refused_while_running(
    lab_tmp_path: Path,
) -> None:
    # utilization 0: the watermark is a whole chunk, so 100 MiB written grows 64 -> 160 -> 256.
    async with lab_host(workdir=lab_tmp_path, chunk_mib=CHUNK_MIB, utilization_percent=0,
                        poll_interval_s=0.5) as host:
        guest = await host.start_guest("vm1", GuestJob(mib=100, rate_kib_s=32768),
                                       start_mib=64, virtual_mib=1024)
        volume = f"{guest.volume.vg}/{guest.volume.lv}"
        await guest.vm.wait_for_start(timeout=120)
        async with guest.vm.qmp() as qmp:
            await qmp.execute("stop")  # an operator pause: QEMU holds the volume, never resumed
            await until(lambda: paused(host, "vm1") == "user", 30, "the operator pause")
            code, out, err = await cli(host, "volume", "reduce", volume)
            await qmp.execute("cont")
        assert code == 1, (out, err)
        [line] = error_lines(err)
        assert f"cannot reduce {volume}: VM vm1 uses it" in line and "Traceback" not in err
        assert (await guest.vm.result(timeout=300)).verified
        assert await guest.vm.wait_exit(timeout=60) == 0  # clean shutdown
        await until(lambda: paused(host, "vm1") == "gone", 30, "the monitor to drop vm1")
        path = host.volumes.file_path(guest.volume)
        size = (await anyio.Path(path).stat()).st_size
        assert size == 256 * MiB
        end = (await check_image(path)).image_end_offset
        target = reduce_target(end, size, CHUNK_MIB * MiB, 4 * MiB, leaf=True)
        assert end <= target < size

        code, out, err = await cli(host, "volume", "reduce", volume, "--dry-run")
        assert code == 0 and "would give back" in out, (out, err)
        assert (await anyio.Path(path).stat()).st_size == size
        code, out, err = await cli(host, "volume", "reduce", volume)
        assert code == 0 and "gave back" in out, (out, err)
        assert (await anyio.Path(path).stat()).st_size == target
        check = await check_image(path)
        assert check.consistent and check.leaks == 0 and check.image_end_offset == end
        given = host.service.metrics.registry.get_sample_value(
            "autoextend_volume_reduced_bytes_total")
        assert given == size - target
        code, out, err = await cli(host, "volume", "reduce", volume)
        assert code == 0 and "nothing to give back" in out, (out, err)

        again = await host.restart_guest("vm1", GuestJob(mib=100, mode=Mode.VERIFY))
        assert (await again.vm.result(timeout=300)).verified


async def test_reduce_on_stop_only_after_a_clean_shutdown(lab_tmp_path: Path) -> None:
    import signal

    extra = {"policy": {"reduce_on_stop": True}}
    async with lab_host(workdir=lab_tmp_path, chunk_mib=CHUNK_MIB, utilization_percent=0,
                        poll_interval_s=0.5, extra=extra) as host:
        killed = await host.start_guest("vm2", GuestJob(mib=100, rate_kib_s=8192),
                                        start_mib=64, virtual_mib=1024)
        clean = await host.start_guest("vm1", GuestJob(mib=100), start_mib=64,
                                       virtual_mib=1024)
        path2 = host.volumes.file_path(killed.volume)

        async def size(path: str) -> int:
            return (await anyio.Path(path).stat()).st_size

        sizes: dict[str, int] = {}

        async def grown() -> None:
            sizes["vm2"] = await size(path2)

        with anyio.fail_after(120):
            while sizes.get("vm2", 0) <= 64 * MiB:  # vm2 was extended: it has space to give
                await grown()
                await anyio.sleep(0.2)  # poll the file size until vm2 was extended
        killed.vm.send_signal(signal.SIGKILL)  # a crash: never reduced
        await killed.vm.wait_exit(timeout=30)
        await until(lambda: paused(host, "vm2") == "gone", 30, "the monitor to drop vm2")
        assert (await clean.vm.result(timeout=300)).verified
        assert await clean.vm.wait_exit(timeout=60) == 0
        path1 = host.volumes.file_path(clean.volume)
        reducer = host.service.capacity.reducer
        await until(lambda: reducer.reduces == 1, 60, "the reduce on stop",
                    describe=lambda: host.service.capacity.status())
        end = (await check_image(path1)).image_end_offset
        assert await size(path1) == reduce_target(end, 256 * MiB, CHUNK_MIB * MiB, 4 * MiB,
                                                  leaf=True)
        assert (await check_image(path1)).consistent
        assert await size(path2) == sizes["vm2"]  # the killed VM's volume is untouched
        assert reducer.reduces == 1
