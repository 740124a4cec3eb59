"""Issue 27 item 1 in local mode: a host in local mode does not reduce or remove a volume an
idle guest uses on another host of the pool.

Two ``autoextend run`` hosts share a pool. Host B (mailbox mode) runs a real guest that stays
idle past the hot window. Host A comes back in local mode (``[service] extender =
"local"``), its ``[lease]`` section kept: the pool's shared area. Its ``volume reduce`` and
``volume remove`` of the guest's volume read the hosts' in-use records themselves
(``autoextend/sharedgate.py``: the SPM's decode and rule) and refuse with one line naming
host B; the volume keeps its size. Negative control: once the guest stopped and B no longer
lists the volume, the same reduce and remove go through.

Host A runs in its own PID namespace (``alone.restart_alone``): on one machine its own
holders scan would otherwise see B's QEMU and refuse first, and what is tested here is the
look at B's record."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoextend.lab.multihost import pool
from autoextend.lab.waiting import until

from .alone import cli, idle_guest_elsewhere, in_use_count, published_and_idle

pytestmark = pytest.mark.slow
MiB = 1 << 20
HOT = 2.0


@pytest.mark.timeout(900)
async def test_a_local_mode_host_does_not_shrink_a_volume_a_guest_uses_on_another_host(
    lab_tmp_path: Path,
) -> None:
    async with pool(2, directory=lab_tmp_path, chunk_mib=64, hot_window_s=HOT) as p:
        guest_host, asker, g = await idle_guest_elsewhere(p, local=True)
        name = f"{g.volume.vg}/{g.volume.lv}"
        path = anyio.Path(p.directory / "volumes" / g.volume.vg / g.volume.lv)
        await published_and_idle(p, guest_host, HOT)
        size = (await path.stat()).st_size
        for command in (("volume", "reduce", name), ("volume", "reduce", name, "--dry-run"),
                        ("volume", "remove", name)):
            code, line = await cli(p, asker, *command)
            assert code == 1, (command, line)
            assert f"in use on host {guest_host}" in line, (command, line)
            assert "local mode" in line, (command, line)
            assert (await path.stat()).st_size == size
        assert g.vm.returncode is None  # the guest still runs

        await g.vm.stop()  # negative control: nothing uses the volume anywhere now

        async def released() -> bool:
            return await in_use_count(p, guest_host) == 0

        await until(released, 300, "host B to stop listing the volume")
        code, line = await cli(p, asker, "volume", "reduce", name)
        assert code == 0 and "reduced to" in line, line
        assert (await path.stat()).st_size < size
        code, line = await cli(p, asker, "volume", "remove", name)
        assert code == 0 and line.endswith("removed"), line
        assert not await path.exists()
