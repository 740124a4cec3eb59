"""Issue 27 item 2 with running hosts: ``pool grow`` waits for every live host's own view of
the grown PV.

Three ``autoextend run`` hosts in mailbox mode. Each sees the VG's PV (the loop stand-in's
``<vg>/.pv``, ``lvm/loop_pool.py``) through a loop device of its own (``attach_view``), as
hosts see one LUN through their own device paths, and publishes that device's size in its
in-use record. The backing file grows (the LUN grew on the array); the SPM and one other
host rescan their device (``losetup -c``), the third does not. ``pool grow`` is refused with
one line naming the third host, and the VG keeps its size; once that host rescanned, the same
command resizes the PV. (With real lvm2 and the same per-host loop devices:
``tests/lvm/test_grow_views_lvm.py``.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoextend.lab.multihost import VG, pool
from autoextend.lab.waiting import until
from autoextend.lvm import loopdev
from autoextend.lvm.loop_backend import vg_capacity
from autoextend.lvm.loop_pool import PV_FILE

from .alone import cli

pytestmark = pytest.mark.slow
MiB = 1 << 20


@pytest.mark.timeout(900)
async def test_pool_grow_waits_for_the_host_that_did_not_rescan(lab_tmp_path: Path) -> None:
    async with pool(3, directory=lab_tmp_path, chunk_mib=64) as p:
        spm = await p.wait_for_spm()
        rescans, stale = [h for h in sorted(p.hosts) if h != spm]
        vg_dir = p.directory / "volumes" / VG
        await p.volumes.set_vg_capacity(VG, 64 * MiB)
        pv = vg_dir / PV_FILE
        pv.touch()
        os.truncate(pv, 64 * MiB)  # the VG's one PV: 64 MiB so far
        device: dict[int, str] = {}
        for h in p.hosts:  # each host's own view of the LUN
            device[h] = await p.host_volumes(h).attach_view(str(pv))
            p.stack.push_async_callback(loopdev.detach, device[h])
        os.truncate(pv, 1024 * MiB)  # the LUN grew on the array
        for h in (spm, rescans):
            await loopdev.set_capacity(device[h])
        assert loopdev.size_of(device[stale]) == 64 * MiB

        answers: list[tuple[int, str]] = []

        async def refused_naming_the_stale_host() -> bool:
            answers.append(await cli(p, rescans, "pool", "grow", "--vg", VG))
            return f"host {stale}: rescan PV" in answers[-1][1]

        # Until the hosts that rescanned published their new view, a refusal may name them.
        await until(refused_naming_the_stale_host, 300,
                    f"pool grow to be refused naming host {stale}")
        assert all(code == 1 for code, _ in answers), answers
        # The host and the advice come first: a reply's text holds 100 bytes, and this lab's
        # PV path takes most of them (the figures after it may be cut).
        assert vg_capacity(str(vg_dir)) == 64 * MiB  # nothing resized

        await loopdev.set_capacity(device[stale])
        answers.clear()

        async def resized() -> bool:
            answers.append(await cli(p, rescans, "pool", "grow", "--vg", VG))
            return answers[-1][0] == 0

        await until(resized, 300, f"pool grow to pass once host {stale} rescanned")
        assert "1 PV(s) resized" in answers[-1][1], answers[-1]
        assert all(f"host {stale}: rescan PV" in line for _, line in answers[:-1]), answers
        assert vg_capacity(str(vg_dir)) == 1024 * MiB
