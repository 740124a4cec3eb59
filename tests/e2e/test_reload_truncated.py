"""Issue 35 against a real service and a real guest: a config file cut at each section
boundary and SIGHUPed never changes a running value unconfirmed, and the volume never grows
by more than one configured chunk per extension.

``autoextend run`` (local mode, QMP, loop volumes) is a real process reading a real file; the
guest writes all the while (QEMU under TCG, a loop-device thin volume).
"""

from __future__ import annotations

import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from autoextend import control
from autoextend.errors import ServiceNotRunning
from autoextend.lab import proc as lab_proc
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.jsonlog import json_records
from autoextend.lab.qemu import guest_spec, launch
from autoextend.lab.singlehost import create_qcow2_disk
from autoextend.lab.waiting import until
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.volumes import LocalAuthority, VolumeRef

pytestmark = pytest.mark.slow
MiB = 1 << 20
CHUNK_MIB = 32  # the override's chunk: what the running config extends this volume by
START_MIB = 32

CONFIG = """\
[service]
hypervisor = "qmp"
control_socket = "{d}/ctl.sock"

[qmp]
socket_glob = "{d}/qmp/*.sock"
rescan_interval_s = 0.2

[volumes]
backend = "loop"
loop_root = "{d}/volumes"
loop_extent_mib = 4

[resume]
policy = "leave"
kill_after_s = 60.0

[policy]
chunk_mib = 64
utilization_percent = 50
extent_mib = 4
poll_interval_s = 2.0
retry_initial_s = 0.2
retry_max_s = 2.0

[[policy.overrides]]
vg = "demo"
chunk_mib = {chunk}
"""
REFUSED = ("config reload held back until confirmed; keeping the running config",
           "config reload failed; keeping the old config")


def records(log: Path) -> list[dict[str, Any]]:
    return json_records(log)


def boundaries(text: str) -> list[int]:
    """Every offset where a section starts (``[x]`` or ``[[x]]``), and 0."""
    offsets, at = [0], 0
    for line in text.splitlines(keepends=True):
        if line.startswith("[") and at > 0:
            offsets.append(at)
        at += len(line)
    return offsets


async def test_truncated_configs_sighuped_while_a_guest_writes_change_nothing(
    lab_tmp_path: Path, lab_guest: GuestImage
) -> None:
    work = lab_tmp_path
    (work / "qmp").mkdir()
    cfg, log = work / "autoextend.toml", work / "service.log"
    full = CONFIG.format(d=work, chunk=CHUNK_MIB)
    cfg.write_text(full)
    sock = str(work / "ctl.sock")
    volumes = LoopVolumeBackend(str(work / "volumes"), 4 * MiB, LocalAuthority())
    async with AsyncExitStack() as stack:
        with log.open("w") as err:
            proc: Process = await anyio.open_process(
                [sys.executable, "-m", "autoextend", "--config", str(cfg), "--log-format", "json",
                 "run"], stdout=None, stderr=err)

        stack.push_async_callback(lab_proc.stop, proc, 30.0)

        async def answers() -> bool:
            try:
                await control.call_dict(sock, "status")
            except ServiceNotRunning:
                assert proc.returncode is None, log.read_text()
                return False
            return True

        await until(answers, 120, "the service to answer status")
        before = (await control.call_dict(sock, "config"))["running"]

        # A guest that writes for about a minute (3 MiB/s), from a 32 MiB volume.
        volume, device = await create_qcow2_disk(volumes, stack, VolumeRef("demo", "vm1-disk"),
                                                 START_MIB, 512)
        job = await anyio.to_thread.run_sync(with_expected_md5,
                                             GuestJob(mib=160, rate_kib_s=3072, seed=35))
        spec = guest_spec("vm1", lab_guest, [device], job, extra_args=(
            "-name", "vm1", "-qmp", f"unix:{work}/qmp/vm1.sock,server=on,wait=off"))
        vm = await launch(spec, work / "vms" / "vm1")
        stack.push_async_callback(vm.stop)

        def extended() -> list[int]:
            return [r["size"] for r in records(log) if r["event"] == "extended"]

        await until(lambda: extended(), 180, "the first extension",
                    describe=lambda: records(log)[-5:])

        # Each section boundary in turn: the file as an editor leaves it half-saved. The cut
        # before [policy] (the issue's: its defaults would grow by 2560 MiB) comes last and
        # stays on disk while the guest writes on.
        policy_cut = full.index("[policy]")
        cuts = [c for c in boundaries(full) if c != policy_cut] + [policy_cut]
        assert len(cuts) == 6
        for cut in cuts:
            refused = sum(1 for r in records(log) if r["event"] in REFUSED)
            cfg.write_text(full[:cut])
            proc.send_signal(signal.SIGHUP)
            await until(lambda n=refused: sum(1 for r in records(log) if r["event"] in REFUSED)
                        > n, 60, f"the reload of the file cut at {cut} to be refused",
                        describe=lambda: records(log)[-3:])
            now = await control.call_dict(sock, "config")
            assert now["running"] == before, cut  # not one running value changed
            assert now["reloads"] == 0
        held_since = len(extended())
        await until(lambda: len(extended()) >= held_since + 2, 300,
                    "two extensions while the cut file is held back",
                    describe=lambda: records(log)[-3:])
        during = len(extended())
        assert (await control.call_dict(sock, "config"))["held"] is not None

        # The whole file again: nothing to change, nothing held.
        cfg.write_text(full)
        proc.send_signal(signal.SIGHUP)
        await until(lambda: any(r["event"] == "config reloaded" for r in records(log)), 60,
                    "the reload of the whole file")
        now = await control.call_dict(sock, "config")
        assert now["running"] == before and now["held"] is None and now["applied"] == []

        result = await vm.result(timeout=600)
        assert result.verified
        sizes = [START_MIB * MiB, *extended()]
        steps = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
        print(f"extensions: {len(steps)} ({during} before the whole file was back),"
              f" steps MiB: {[s // MiB for s in steps]}")
        assert steps and all(0 < s <= CHUNK_MIB * MiB for s in steps), steps
        held = [r for r in records(log) if r["event"] == REFUSED[0]]
        assert held and all(r["held"] for r in held)
        assert "Traceback" not in log.read_text()
        await lab_proc.stop(proc, 30.0)
        assert proc.returncode == 0, log.read_text()[-2000:]
