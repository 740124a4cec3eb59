"""Issue 31, the chaos soak's lost L2 table (docs/chaos.md, stop 39), without a guest OS.

QEMU 7.2 caches a ``host_device`` node's length (``total_sectors``): it is read when the node
is opened and when it is *activated* (an incoming migration's nodes are opened inactive), it
is raised by a write past it, and a read past it returns zeros. Neither a grown device nor
``cont`` on an already active node changes it.

The case: one qcow2 (2 GiB virtual, 64 KiB clusters) on one file seen through two loop
devices, the source's view (64 MiB) and the destination's stale view (16 MiB). The source
writes 20 MiB at virtual 0 (data past 16 MiB) and 64 KiB at virtual 600 MiB (its L2 table,
the second one, lies at about host 20 MiB, past the destination's view). Through HMP
``qemu-io`` (no guest OS), on QEMUs with no machine. Then a migration to the destination,
held by ``-S``, and the management's refresh of the destination's view (``losetup -c``: what
``volume prepare --direct`` does in the loop stand-in), then ``cont``; then the destination
writes 64 KiB at virtual 601 MiB (the same L2 table) and reads everything back.

* ``stale-activation`` (the lab's order before the fix: the destination's nodes activated
  when the migration completes, refreshed after): the protocol node keeps the 16 MiB it was
  activated with; qcow2 reads its L2 table past it as zeros, writes it back with only the
  new entry, and the 600 MiB data is lost (reads as zeros; ``qemu-img check`` leaks its
  cluster). This documents QEMU's behaviour: it must show the loss.
* ``late-block-activate`` (the protocol now: the capability set on the destination before
  ``migrate-incoming``, so its nodes are activated at ``cont``, after the refresh): the node
  takes the refreshed 64 MiB at ``cont`` and nothing is lost.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab.migrate import (
    arrived_state,
    node_length,
    start_destination,
    start_migration,
)
from autoextend.lab.qemu import Drive, QemuVm, VmSpec, launch
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lvm import loopdev

pytestmark = pytest.mark.slow
MiB = 1 << 20
STALE = 16 * MiB
FULL = 64 * MiB
FAILED = "Pattern verification failed"


@dataclass
class Seen:
    lengths: dict[str, int | None] = field(default_factory=dict)  # the node's length, by moment
    reads: dict[str, str] = field(default_factory=dict)    # qemu-io's answer, by read
    leaks: int = 0
    corruptions: int = 0


async def qmp(vm: QemuVm, command: str, args: dict[str, Any] | None = None) -> Any:
    async with vm.qmp("test") as client:
        return await client.execute(command, args)


async def qemu_io(vm: QemuVm, node: str, command: str) -> str:
    """HMP ``qemu-io`` on ``node``: what it printed (QEMU 7.2 prints it on its stdout, the
    lab's ``qemu.log``, not in the HMP reply), its statistics line or its failure."""
    before = len(vm.stderr_text())
    await qmp(vm, "human-monitor-command", {"command-line": f'qemu-io {node} "{command}"'})
    with anyio.move_on_after(10):
        while not any(word in vm.stderr_text()[before:] for word in ("ops/sec", "failed")):
            await anyio.sleep(0.05)  # the output is written as the command runs
    return vm.stderr_text()[before:]


async def migrate_to_stale_view(directory: Path, *, late: bool) -> Seen:
    seen = Seen()
    image = directory / "volume.img"
    await anyio.to_thread.run_sync(lambda: image.open("xb").truncate(STALE))
    devices: list[str] = []
    vms: list[QemuVm] = []
    try:
        src_dev = await loopdev.attach(image)
        devices.append(src_dev)
        done = await anyio.run_process(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                        "cluster_size=65536", src_dev, "2G"], check=False)
        assert done.returncode == 0, done.stderr
        dst_dev = await loopdev.attach(image)  # the destination host's view: 16 MiB
        devices.append(dst_dev)
        await anyio.to_thread.run_sync(os.truncate, image, FULL)
        await loopdev.set_capacity(src_dev)  # the source's view: 64 MiB
        assert loopdev.size_of(dst_dev) == STALE

        source = await launch(VmSpec("nodelen", (Drive(src_dev),), machine="none"),
                              directory / "src")
        vms.append(source)
        for command in ("write -P 0x11 0 20M", "write -P 0x5a 600M 64k"):
            assert "wrote" in await qemu_io(source, "fmt0", command)
        unwatched = directory / "qmp"
        unwatched.mkdir()
        dest = await start_destination(source, [dst_dev], directory / "dst", unwatched,
                                       autostart=False, late_block_activate=late)
        vms.append(dest)
        migration = await start_migration(source, dest, directory / "mig.sock",
                                          max_bandwidth=1 << 40)
        assert await migration.wait_ended(120) == "completed"
        assert await arrived_state(dest, 120) == "paused"
        seen.lengths["arrived"] = await node_length(dest, "file0")
        await loopdev.set_capacity(dst_dev)  # the management's prepare
        assert loopdev.size_of(dst_dev) == FULL
        seen.lengths["refreshed"] = await node_length(dest, "file0")
        await qmp(dest, "cont")
        seen.lengths["cont"] = await node_length(dest, "file0")
        for command in ("read -P 0x5a 600M 64k", "read -P 0x11 16M 4M"):
            seen.reads[f"before: {command}"] = await qemu_io(dest, "fmt0", command)
        # The guest's next write under the same L2 table (virtual 512 MiB to 1 GiB).
        assert "wrote" in await qemu_io(dest, "fmt0", "write -P 0x66 601M 64k")
        for command in ("read -P 0x5a 600M 64k", "read -P 0x11 0 20M",
                        "read -P 0x66 601M 64k"):
            seen.reads[f"after: {command}"] = await qemu_io(dest, "fmt0", command)
        await source.stop()
        await dest.stop()
        check = await qemu_img_check(str(image))
        seen.leaks, seen.corruptions = check.leaks, check.corruptions
        done = await anyio.run_process(["qemu-io", "-f", "qcow2", "-c",
                                        "read -P 0x5a 600M 64k", str(image)], check=False)
        seen.reads["image: read -P 0x5a 600M 64k"] = done.stdout.decode(errors="replace")
    finally:
        with anyio.CancelScope(shield=True):
            for vm in vms:
                await vm.stop()
            for device in devices:
                await loopdev.detach(device)
    return seen


async def test_stale_activation_reads_zeros_and_loses_the_l2_table(lab_tmp_path: Path
                                                                    ) -> None:
    seen = await migrate_to_stale_view(lab_tmp_path, late=False)
    # Activated at completion on the stale view; neither the refresh nor cont re-read it.
    assert seen.lengths == {"arrived": STALE, "refreshed": STALE, "cont": STALE}, seen
    # Past the node's length QEMU reads zeros: data, and the L2 table mapping 600 MiB.
    assert FAILED in seen.reads["before: read -P 0x5a 600M 64k"], seen
    assert FAILED in seen.reads["before: read -P 0x11 16M 4M"], seen
    # The write raised the length (the 20 MiB read back now) but wrote the L2 table back
    # from its zeroed copy: the mapping of 600 MiB is gone for good, its cluster leaked.
    assert FAILED not in seen.reads["after: read -P 0x11 0 20M"], seen
    assert FAILED not in seen.reads["after: read -P 0x66 601M 64k"], seen
    assert FAILED in seen.reads["after: read -P 0x5a 600M 64k"], seen
    assert FAILED in seen.reads["image: read -P 0x5a 600M 64k"], seen
    assert seen.leaks >= 1, seen


async def test_late_block_activate_and_refresh_before_cont_lose_nothing(lab_tmp_path: Path
                                                                         ) -> None:
    seen = await migrate_to_stale_view(lab_tmp_path, late=True)
    # Inactive until cont: the node takes the refreshed length when it is activated.
    assert seen.lengths == {"arrived": STALE, "refreshed": STALE, "cont": FULL}, seen
    assert len(seen.reads) == 6, seen
    for command, answer in seen.reads.items():
        assert FAILED not in answer and "read " in answer, (command, seen)
    assert (seen.leaks, seen.corruptions) == (0, 0), seen
