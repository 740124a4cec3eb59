"""Issue 14 on real lvm2 (activation off): the VG gauges against ``vgs``, wake on
``vgextend``, and a reduce whose metadata change comes only from the writer."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import anyio
import pytest

from autoextend.capacity import metrics as capacity_metrics
from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.watch import CapacityWatcher
from autoextend.clock import MonotonicClock
from autoextend.errors import NotSpmError
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.lvmconf import render_config
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.runner import ProcessRunner
from autoextend.volumes import VolumeRef

from .support import MiB, Pool, RecordingRunner, make_pv_files, release_under

pytestmark = pytest.mark.slow


async def vgs_truth(pool: Pool, devices: list[str]) -> tuple[int, int, int]:
    """(size, free, seqno) straight from lvm2's own ``vgs``."""
    cfg = render_config(replace(pool.config, devices=tuple(devices)))
    result = await anyio.run_process(
        ["lvm", "vgs", "--config", cfg, "--readonly", "--reportformat", "json", "--units", "b",
         "--nosuffix", "-o", "vg_size,vg_free,vg_seqno", pool.vg])
    row = json.loads(result.stdout)["report"][0]["vg"][0]
    return int(row["vg_size"]), int(row["vg_free"]), int(row["vg_seqno"])


async def test_gauges_match_vgs_and_vgextend_wakes(pool: Pool) -> None:
    from prometheus_client import CollectorRegistry

    host_runner = RecordingRunner(ProcessRunner(timeout_s=30.0))
    host = LvmVolumeBackend(host_runner, LvmReader(host_runner, pool.config), None, (pool.vg,))
    woken: list[str] = []
    settings = CapacitySettings.model_validate({"warn_free_percent": 20.0})
    watcher = CapacityWatcher(settings, host, MonotonicClock())  # the backend's vg_figures
    registry = CollectorRegistry()
    capacity_metrics.register(registry, capacity_metrics.CapacityCollector(
        watcher, lambda: (0, 0)))

    def gauge(name: str) -> float | None:
        return registry.get_sample_value(name, {"vg": pool.vg})

    async def check(devices: list[str]) -> None:
        woken.extend(await watcher.look([pool.vg], {pool.vg: 2048 * MiB}))
        size, free, _ = await vgs_truth(pool, devices)
        assert gauge("autoextend_vg_size_bytes") == size
        assert gauge("autoextend_vg_free_bytes") == free
        assert gauge("autoextend_vg_committed_bytes") == 2048 * MiB
        assert gauge("autoextend_vg_overcommit_ratio") == pytest.approx(2048 * MiB / size)

    await check(pool.devices)
    for i in range(3):
        await pool.writer.create_lv(VolumeRef(pool.vg, f"lv{i}"), 212 * MiB)
    await check(pool.devices)
    assert gauge("autoextend_vg_level") == 1.0  # 636 of ~756 MiB used: warning
    assert woken == []
    # vgextend with a fourth PV: the watcher sees the space and wakes the VG's waiters.
    extra_dir = os.path.join(pool.workdir, "extra")  # not over the pool's own pv0.img
    os.mkdir(extra_dir)
    _, extra = await make_pv_files(extra_dir, 1, 256 * MiB)
    try:
        devices = [*pool.devices, *extra]
        cfg = render_config(replace(pool.config, devices=tuple(devices)))
        await anyio.run_process(["lvm", "pvcreate", "--config", cfg, "--yes", *extra])
        ext = await anyio.run_process(["lvm", "vgextend", "--config", cfg, pool.vg, *extra],
                                      check=False)
        assert ext.returncode == 0, ext.stderr.decode()
        host.reader = LvmReader(host_runner, replace(pool.config, devices=tuple(devices)))
        await check(devices)
        assert woken == [pool.vg]
        assert gauge("autoextend_vg_level") == 0.0
        # Every command of the watcher's host was a read-only report: one vgs per look,
        # and an lvs of the segments only when the VG's metadata changed.
        assert host_runner.commands and all(
            c[0] in ("vgs", "lvs") and "--readonly" in c for c in host_runner.commands)
        vgs = [c for c in host_runner.commands if c[0] == "vgs"]
        lvs = [c for c in host_runner.commands if c[0] == "lvs"]
        assert len(vgs) == 3 and len(lvs) == 3  # each look saw a new vg_seqno
        await watcher.look([pool.vg], {})
        assert [c[0] for c in host_runner.commands[-1:]] == ["vgs"]  # unchanged: no lvs
    finally:
        await anyio.run_process(["lvm", "vgreduce", "--config", cfg, pool.vg, *extra],
                                check=False)
        await release_under(extra_dir)
        await host.aclose()


async def test_reduce_changes_metadata_only_through_the_writer(pool: Pool) -> None:
    volume = VolumeRef(pool.vg, "disk")
    await pool.writer.create_lv(volume, 256 * MiB)
    host_runner = RecordingRunner(ProcessRunner(timeout_s=30.0))
    host = LvmVolumeBackend(host_runner, LvmReader(host_runner, pool.config), None, (pool.vg,))
    spm = LvmVolumeBackend(pool.runner, pool.reader, pool.writer, (pool.vg,))
    try:
        _, _, seqno = await vgs_truth(pool, pool.devices)
        with pytest.raises(NotSpmError):
            await host.reduce(volume, 168 * MiB)
        assert (await vgs_truth(pool, pool.devices))[2] == seqno
        result = await spm.reduce(volume, 166 * MiB)  # rounded up to 4 MiB extents
        assert result.changed and result.size == 168 * MiB
        assert (await host.size(volume)) == 168 * MiB  # lv_size as the host reads it
        size, free, after = await vgs_truth(pool, pool.devices)
        assert after == seqno + 1
        again = await spm.reduce(volume, 200 * MiB)  # never grows
        assert not again.changed and again.size == 168 * MiB
        assert (await vgs_truth(pool, pool.devices))[2] == after
        writes = [c for c in pool.runner.commands if c[0] == "lvreduce"]
        assert len(writes) == 1 and "--driverloaded" in writes[0]
        assert all(c[0] in ("vgs", "lvs") for c in host_runner.commands)
    finally:
        await host.aclose()


async def test_reduce_through_the_spm_mailbox(pool: Pool) -> None:
    """A host's REDUCE goes host mailbox -> SPM server -> LvmWriter (O_DIRECT mailbox file):
    refused while the SPM's term is younger than hot_window_s and while a host asked to
    extend the volume within it, then done; vg_seqno moves once, through the writer."""
    from autoextend.clock import MonotonicClock
    from autoextend.directio import open_storage
    from autoextend.lab.waiting import until
    from autoextend.spm.config import MailboxSettings, mailbox_base
    from autoextend.spm.host import HostMailbox
    from autoextend.spm.layout import MailboxLayout
    from autoextend.spm.server import SpmMailServer
    from autoextend.spm.wire import OP_REDUCE, OP_REDUCE_CHECK, ReasonCode, Status
    from autoextend.volumes import LocalAuthority

    hot = 2.0  # the young-term refusal below must come within it on a loaded machine
    settings = MailboxSettings(offset=0, max_hosts=4, poll_interval_s=0.005,
                               reply_poll_interval_s=0.002, reply_poll_max_s=0.02,
                               hot_window_s=hot)
    layout = MailboxLayout(mailbox_base(settings), 512, settings.max_hosts)
    path = os.path.join(pool.workdir, "mailbox")
    with open(path, "wb") as f:
        f.truncate(layout.end)
    storage = await open_storage(path, 512)
    volume = VolumeRef(pool.vg, "disk")
    await pool.writer.create_lv(volume, 256 * MiB)
    spm = LvmVolumeBackend(pool.runner, pool.reader, pool.writer, (pool.vg,))
    server = SpmMailServer(storage, spm, [pool.vg], layout=layout, authority=LocalAuthority(),
                           settings=settings)
    host = HostMailbox(storage, layout, 2, settings)
    clock = MonotonicClock()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            await tg.start(host.run)
            _, _, seqno = await vgs_truth(pool, pool.devices)
            t0 = clock.now()
            young_dry = await host.request(volume, 166 * MiB, op=OP_REDUCE_CHECK)
            young = await host.request(volume, 166 * MiB, op=OP_REDUCE)
            assert young.status is Status.REJECTED and young.reason is ReasonCode.VOLUME_BUSY
            assert "took over" in young.text and "took over" in young_dry.text
            assert young_dry.status is Status.REJECTED
            await until(lambda: clock.now() - t0 > hot, 10, "the new term's hot window")
            ok = await host.request(volume, 256 * MiB)  # an extend (no-op: large enough)
            assert ok.status is Status.OK
            busy_dry = await host.request(volume, 166 * MiB, op=OP_REDUCE_CHECK)
            busy = await host.request(volume, 166 * MiB, op=OP_REDUCE)
            assert busy.status is Status.REJECTED and "host 2 asked to extend it" in busy.text
            assert busy_dry.status is Status.REJECTED and "host 2 asked" in busy_dry.text
            assert (await vgs_truth(pool, pool.devices))[2] == seqno
            t1 = clock.now()
            await until(lambda: clock.now() - t1 > hot, 10, "the volume's hot window")
            would = await host.request(volume, 166 * MiB, op=OP_REDUCE_CHECK)
            assert would.status is Status.OK and would.size == 166 * MiB
            assert (await vgs_truth(pool, pool.devices))[2] == seqno  # a dry run never acts
            done = await host.request(volume, 166 * MiB, op=OP_REDUCE)
            assert done.status is Status.OK and done.size == 168 * MiB
            assert (await pool.reader.lv(volume)).size == 168 * MiB
            assert (await vgs_truth(pool, pool.devices))[2] == seqno + 1
            again = await host.request(volume, 166 * MiB, op=OP_REDUCE)  # served again: done
            assert again.status is Status.OK and again.size == 168 * MiB
            assert (await vgs_truth(pool, pool.devices))[2] == seqno + 1
            assert [c[0] for c in pool.runner.commands].count("lvreduce") == 1
            tg.cancel_scope.cancel()
    finally:
        await storage.close()
