"""Issue 29 item 3: snapshot merges through libvirt (a non-active ``virsh blockcommit``).

Each test builds a three-image chain on loop volumes: a 16 MiB base (qcow2, 256 MiB
virtual), a middle image into which a first guest wrote 40 MiB, and an active top. A second
guest is started paused on the top; the middle image is committed into the base (libvirt API
``blockCommit(disk, base, top)``, the call ``virsh blockcommit --top vda[2] --base vda[1]``
makes); then the guest runs and reads back the 40 MiB through the shortened chain.

- The event path (``libvirt_backend/merges.py``): the backend sees the running commit at a
  look (libvirt gives no event when a commit starts), reports its base as a job target and
  the monitor grows it to ``qemu-img measure`` of the top before the job fills it. The job is
  bandwidth-limited (4 MiB/s, ~10 s) so a look comes before the 16 MiB are written: an
  unthrottled merge into a base that small can fill it before any look, which is what
  ``prepare-merge`` is for.
- Negative control: the same merge with the backend's merge watch off (its constructor
  argument): the base stays at 16 MiB, the job fails (ENOSPC, ``on-error=report``) and the
  middle image stays in the chain.
- ``prepare-merge`` over a real service's control socket: clear errors for an unknown VM,
  drive and image; then the base is grown before the job, and an unthrottled commit completes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend import control
from autoextend.errors import AutoextendError
from autoextend.lab import proc
from autoextend.lab.guest import GuestJob, Mode
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import LabLibvirtd
from autoextend.lab.singlehost import lab_host
from autoextend.lab.thinvol import qemu_img_check
from autoextend.lab.waiting import until
from autoextend.libvirt_backend import merges
from autoextend.volumes import VolumeRef
from tests.cli.clirun import Result, autoextend

from .harness import Domain, MiB, Rig, lab_domains, monitoring

pytestmark = pytest.mark.slow

JOB = GuestJob(mib=40, seed=29)
BASE_MIB = 16
THROTTLE_MIB_S = 4  # the event-path merges: 40 MiB in about 10 s


@dataclass
class Chain:
    base_vol: VolumeRef
    base: str
    mid: str
    dom: Domain          # the paused guest on the top, which will verify JOB's data
    top_index: int       # the middle image: the merge's top
    base_index: int


async def backed(image: str, backing: str) -> None:
    await proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2",
                    image, "256M"])


async def xml_of(rig: Rig, name: str) -> str:
    dom = await rig.dom(name)
    return str(await rig.call(dom.XMLDesc, 0))


async def size_of(rig: Rig, volume: VolumeRef) -> int:
    return (await anyio.Path(rig.backend.file_path(volume)).stat()).st_size


async def three_image_chain(rig: Rig, name: str) -> Chain:
    """base (16 MiB) <- middle (JOB's 40 MiB, written by a first guest) <- top, with a
    second guest paused on the top."""
    base_vol, base = await rig.disk(f"{name}-base", BASE_MIB, 256)
    mid_vol, mid = await rig.disk(f"{name}-mid", 64, 256)
    await backed(mid, base)
    writer = await rig.start(f"{name}-w", JOB, reuse=Domain(
        f"{name}-w", mid, mid_vol, rig.workdir / f"{name}-w.serial"))
    written = await rig.finished(writer, timeout=240)
    assert written.verified and written.written_mib == JOB.mib, written
    top_vol, top = await rig.disk(f"{name}-top", 64, 256)
    await backed(top, mid)
    dom = await rig.start(name, replace(JOB, mode=Mode.VERIFY), paused=True,
                          reuse=Domain(name, top, top_vol, rig.workdir / f"{name}.serial"))
    chain = merges.parse_chains(await xml_of(rig, name))["vda"]
    assert [i.path for i in chain] == [top, mid, base], chain
    return Chain(base_vol, base, mid, dom, chain[1].index, chain[2].index)


async def commit(rig: Rig, c: Chain, bandwidth_mib_s: int) -> None:
    """``virsh blockcommit vm vda --top vda[mid] --base vda[base]``; returns when the job
    has ended (done or failed)."""
    handle = await rig.dom(c.dom.name)
    await rig.call(handle.blockCommit, "vda", f"vda[{c.base_index}]", f"vda[{c.top_index}]",
                   bandwidth_mib_s, 0)

    async def ended() -> bool:
        return not await rig.call(handle.blockJobInfo, "vda", 0)

    await until(ended, 180, "the commit job to end")


async def read_back(rig: Rig, c: Chain) -> None:
    """Run the paused guest: it reads JOB's data through the merged chain."""
    handle = await rig.dom(c.dom.name)
    await rig.call(handle.resume)
    result = await rig.finished(c.dom, timeout=240)
    assert result.verified and result.mode is Mode.VERIFY, result
    assert (await qemu_img_check(c.base)).clean


@asynccontextmanager
async def rig_for(libvirtd: LabLibvirtd, lab_guest: GuestImage, workdir: Path,
                  watch_merges: bool) -> AsyncIterator[Rig]:
    async with lab_domains(libvirtd.uri, workdir, lab_guest, chunk_mib=8,
                           poll_interval_s=0.5, full_poll_interval_s=0.5,
                           watch_merges=watch_merges) as rig, monitoring(rig):
        yield rig


async def test_snapshot_merge_grows_its_base(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    async with rig_for(libvirtd, lab_guest, lab_tmp_path, watch_merges=True) as rig:
        c = await three_image_chain(rig, "lvm-merge")
        await commit(rig, c, THROTTLE_MIB_S)
        xml = await xml_of(rig, c.dom.name)
        size = await size_of(rig, c.base_vol)
        print(f"base {size // MiB} MiB after the merge; {rig.history}")
        assert c.mid not in xml, "the middle image is still in the chain: the merge failed"
        assert rig.tally.job_failures == 0
        assert size >= BASE_MIB * MiB + JOB.mib * MiB // 2
        await read_back(rig, c)


async def test_snapshot_merge_without_the_watch_fails(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    """Negative control: the backend's merge watch off."""
    async with rig_for(libvirtd, lab_guest, lab_tmp_path, watch_merges=False) as rig:
        c = await three_image_chain(rig, "lvm-nowatch")
        await commit(rig, c, THROTTLE_MIB_S)
        await until(lambda: rig.tally.job_failures >= 1, 30, "the job failure reported")
        xml = await xml_of(rig, c.dom.name)
        assert c.mid in xml, "the merge completed without the watch: not a control"
        assert await size_of(rig, c.base_vol) == BASE_MIB * MiB


async def prepare(sock: str, **request: Any) -> dict[str, Any]:
    return await control.call_dict(sock, "merge_prepare", wait_s=120, **request)


async def cli(*args: str) -> Result:
    """The CLI in its own process (in a worker thread: the service runs on this loop)."""
    return await anyio.to_thread.run_sync(lambda: autoextend(*args, timeout=180))


async def test_prepare_merge_grows_the_base_before_the_job(
    libvirtd: LabLibvirtd, lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    """prepare-merge through a real service (libvirt hypervisor, local extender) over its
    control socket; the rig (monitor not running) only makes the domains and volumes."""
    extra = {"libvirt": {"uri": libvirtd.uri, "reconnect_interval_s": 0.2,
                         "reconnect_max_s": 1.0, "rescan_interval_s": 1.0}}
    async with lab_domains(libvirtd.uri, lab_tmp_path, lab_guest) as rig, lab_host(
            workdir=lab_tmp_path, hypervisor="libvirt", chunk_mib=8, poll_interval_s=0.5,
            extra=extra) as host:
        sock = host.settings.service.control_socket
        c = await three_image_chain(rig, "lvm-prep")
        name, top = c.dom.name, f"vda[{c.top_index}]"
        for request, words in (
            ({"vm": "no-such-vm", "drive": "vda"}, "no-such-vm"),
            ({"vm": name, "drive": "vdz"}, "no writable disk vdz"),
            ({"vm": name, "drive": "vda[99]"}, "vda[99]: no such image"),
            ({"vm": name, "drive": top, "base": 99}, "no such image"),
            ({"vm": name, "drive": f"vda[{c.base_index}]"}, "no backing image"),
            ({"vm": name, "drive": "vda", "base": "x"}, "must be an image index"),
        ):
            with pytest.raises(AutoextendError) as err:
                await prepare(sock, **request)
            assert words in str(err.value) and "Traceback" not in str(err.value), err.value
        unknown = await cli("volume", "prepare-merge", "--socket", sock, name, "vdq")
        assert unknown.code == 1 and "no writable disk vdq" in unknown.error, unknown
        before = await size_of(rig, c.base_vol)
        ran = await cli("volume", "prepare-merge", "--socket", sock, "--json", name, top)
        assert ran.code == 0, ran
        done = json.loads(ran.stdout)
        after = await size_of(rig, c.base_vol)
        print(f"prepare-merge: {done}")
        assert (done["top"], done["base"]) == (top, f"vda[{c.base_index}]")
        assert before == BASE_MIB * MiB and done["extended"]
        assert after == done["size"] >= done["need"] > JOB.mib * MiB
        await commit(rig, c, 0)  # unthrottled: the base already holds what it needs
        assert c.mid not in await xml_of(rig, name), "the merge failed"
        await read_back(rig, c)
