"""``autoextend volume prepare`` (issue 28 item 1): the refresh rule (pure, over a fake
backend), the service's control command over the real socket, the CLI's one-line errors and
the shipped libvirt hook's contract (which operations, nothing on stdout, exit codes).

The real refresh of a stale loop view, run by libvirtd through the hook, is
``tests/libvirt_backend/test_stale_start.py`` (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from autoextend import control, prepare
from autoextend.errors import AutoextendError
from autoextend.lab.singlehost import host_settings
from autoextend.service import Service
from autoextend.volumes import VolumeNotFound, VolumeRef
from tests.cli.clirun import autoextend

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "contrib" / "libvirt" / "hooks" / "qemu"
VOL = VolumeRef("vg0", "lv1")


@dataclass
class Views:
    """A volume backend's view and metadata sizes, in memory (implements the protocols)."""

    metadata: int
    view: int
    refresh_works: bool = True
    refreshes: list[VolumeRef] = field(default_factory=list)

    async def metadata_size(self, volume: VolumeRef) -> int:
        if volume != VOL:
            raise VolumeNotFound(str(volume))
        return self.metadata

    async def size(self, volume: VolumeRef) -> int:
        return self.view

    async def refresh(self, volume: VolumeRef) -> int:
        self.refreshes.append(volume)
        if self.refresh_works:
            self.view = self.metadata
        return self.view

    async def extend(self, volume: VolumeRef, size: int) -> object:
        raise AssertionError("prepare never extends")

    def lookup(self, path: str) -> VolumeRef | None:
        return None

    def device_path(self, volume: VolumeRef) -> str:
        return "/dev/null"


async def test_a_stale_view_is_refreshed() -> None:
    views = Views(metadata=112 * MiB, view=64 * MiB)
    done = await prepare.prepare_view(views, VOL)  # type: ignore[arg-type]
    assert done.refreshed and done.before == 64 * MiB and done.size == 112 * MiB
    assert views.refreshes == [VOL]


async def test_a_view_up_to_date_is_not_refreshed() -> None:
    views = Views(metadata=64 * MiB, view=64 * MiB)
    done = await prepare.prepare_view(views, VOL)  # type: ignore[arg-type]
    assert not done.refreshed and done.size == 64 * MiB
    assert views.refreshes == []  # no lvchange for nothing (and none without device-mapper)


async def test_a_view_that_stays_stale_is_an_error() -> None:
    views = Views(metadata=112 * MiB, view=64 * MiB, refresh_works=False)
    with pytest.raises(prepare.StaleView) as err:
        await prepare.prepare_view(views, VOL)  # type: ignore[arg-type]
    assert len(views.refreshes) == prepare.REFRESH_ATTEMPTS
    assert str(err.value) == (f"vg0/lv1: this host sees {64 * MiB} bytes after refreshing, the"
                              f" metadata says {112 * MiB}: the view is stale; do not start a"
                              " guest on it")


async def test_the_service_prepares_over_its_control_socket(tmp_path: Path) -> None:
    settings = host_settings(tmp_path)
    service = Service(settings)
    root = Path(settings.volumes.loop_root)
    (root / "vg0").mkdir(parents=True)
    with open(root / "vg0" / "lv1", "wb") as f:
        f.truncate(64 * MiB)
    sock = settings.service.control_socket
    async with anyio.create_task_group() as tg:
        await tg.start(service.control.serve)
        done = await control.call_dict(sock, "volume_prepare", volumes=["vg0/lv1"],
                                       paths=["/dev/not-ours", str(root / "vg0" / "lv1")])
        with pytest.raises(AutoextendError, match="volume vg0/nope not found"):
            await control.call(sock, "volume_prepare", volumes=["vg0/nope"])
        with pytest.raises(AutoextendError, match="expected VG/LV"):
            await control.call(sock, "volume_prepare", volumes=["vg0"])
        with pytest.raises(AutoextendError, match="must be a list of strings"):
            await control.call(sock, "volume_prepare", paths="/dev/sda")
        tg.cancel_scope.cancel()
    sample = service.metrics.registry.get_sample_value
    assert sample("autoextend_stale_views_total", {"when": "start"}) == 0  # nothing refreshed
    # Not attached on this host: the view is the file, up to date; the path named the same LV.
    assert done == {"volumes": [{"volume": "vg0/lv1", "metadata_size": 64 * MiB,
                                 "before": 64 * MiB, "size": 64 * MiB, "refreshed": False}],
                    "skipped": ["/dev/not-ours"]}


DOMAIN = """<domain type='qemu'><name>{name}</name><devices>
<disk type='block' device='disk'><driver name='qemu' type='qcow2'/>
<source dev='/dev/vg0/lv1'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda'/><readonly/>
</disk></devices></domain>"""


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    down = autoextend("volume", "prepare", "--socket", sock, "vg0/lv1")
    assert down.code == 1
    assert down.error.startswith("autoextend: error: autoextend service is not running")
    bad = autoextend("volume", "prepare", "--socket", sock, "vg0/")
    assert bad.code == 2 and "expected VG/LV" in bad.error
    xml = tmp_path / "vm1.xml"
    xml.write_text(DOMAIN.format(name="vm2"))
    other = autoextend("volume", "prepare", "--socket", sock, "--domain-xml", str(xml), "vm1")
    assert other.code == 2 and "the XML is domain 'vm2', not 'vm1'" in other.error
    xml.write_text("<domain><name>")
    broken = autoextend("volume", "prepare", "--socket", sock, "--domain-xml", str(xml), "vm1")
    assert broken.code == 2 and "domain XML does not parse" in broken.error
    assert autoextend("volume", "prepare").code == 2


def _hook(*args: str, xml: str = "", socket: Path, program: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "AUTOEXTEND": program or str(Path(sys.executable).with_name("autoextend")),
           "AUTOEXTEND_SOCKET": str(socket), "AUTOEXTEND_HOOK_TIMEOUT": "5"}
    return subprocess.run([str(HOOK), *args], input=xml, capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_hook_ignores_other_operations(tmp_path: Path) -> None:
    for op, sub in (("start", "begin"), ("started", "begin"), ("stopped", "end"),
                    ("release", "end"), ("migrate", "end"), ("reconnect", "begin")):
        run = _hook("vm1", op, sub, "-", socket=tmp_path / "x", program="/nonexistent")
        assert (run.returncode, run.stdout, run.stderr) == (0, "", ""), (op, sub, run)


@pytest.mark.parametrize("op", ["prepare", "migrate", "restore"])
def test_hook_fails_the_start_when_the_service_is_down(tmp_path: Path, op: str) -> None:
    run = _hook("vm1", op, "begin", "-", xml=DOMAIN.format(name="vm1"),
                socket=tmp_path / "none.sock")
    assert run.returncode == 1
    assert run.stdout == ""  # for migrate and restore, stdout would replace the domain XML
    lines = [ln for ln in run.stderr.splitlines() if not ln.startswith("{")]
    assert len(lines) == 1 and "autoextend service is not running" in lines[0], run.stderr


def test_hook_is_executable_and_posix_sh() -> None:
    assert os.access(HOOK, os.X_OK)
    assert HOOK.read_text().startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n", str(HOOK)], check=True, timeout=10)


async def test_incoming_watch_follows_the_metadata_until_the_vm_settles() -> None:
    from autoextend.clock import MonotonicClock
    from autoextend.lab.waiting import until

    views = Views(metadata=64 * MiB, view=64 * MiB)
    settled = {"vm1": False}
    frozen: dict[VolumeRef, str] = {}
    watch = prepare.IncomingWatch(views, settled.__getitem__,  # type: ignore[arg-type]
                                  lambda: frozen, MonotonicClock())
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        watch.watch("vm1", [VOL])
        views.metadata = 80 * MiB  # the source extends during the migration
        await until(lambda: views.view == 80 * MiB, 5, "the view following the metadata")
        assert watch.refreshes == 1 and watch.watching() == ["vm1"]
        settled["vm1"] = True  # arrived: the monitor has it
        await until(lambda: watch.watching() == [], 5, "the watch ending")
        views.metadata = 96 * MiB
        await anyio.sleep(3 * prepare.WATCH_INTERVAL_S)  # time is the subject: no more checks
        assert views.view == 80 * MiB
        settled["vm1"] = False
        watch.watch("vm1", [VOL])
        frozen[VOL] = "vm1"  # it migrates out again: its view is frozen, never refreshed
        await until(lambda: watch.watching() == [], 5, "the watch ending on a frozen view")
        assert views.view == 80 * MiB
        tg.cancel_scope.cancel()


def test_stale_at_start_counts_the_refreshed_views() -> None:
    vol = VolumeRef("vg0", "lv1")
    done = [prepare.PreparedView(vol, 96 * MiB, 64 * MiB, 96 * MiB),
            prepare.PreparedView(vol, 64 * MiB, 64 * MiB, 64 * MiB),
            prepare.PreparedView(vol, 80 * MiB, 64 * MiB, 96 * MiB)]
    assert prepare.stale_at_start(done) == 2
    assert prepare.stale_at_start([]) == 0


def test_cli_direct_needs_no_service(tmp_path: Path) -> None:
    """``volume prepare --direct`` (the QMP migration protocol's destination step) refreshes
    in its own process: no service, no control socket. A loop volume not attached on this
    host is seen at its file's size: up to date."""
    import json

    (tmp_path / "volumes" / "vg0").mkdir(parents=True)
    (tmp_path / "volumes" / "vg0" / "lv1").write_bytes(b"")
    os.truncate(tmp_path / "volumes" / "vg0" / "lv1", 64 * MiB)
    cfg = tmp_path / "volumes.toml"
    cfg.write_text(f'[volumes]\nbackend = "loop"\nloop_root = "{tmp_path / "volumes"}"\n'
                   'loop_host = "h1"\n')
    done = autoextend("--config", str(cfg), "volume", "prepare", "--direct", "--json",
                      "vg0/lv1")
    assert done.code == 0, done
    assert json.loads(done.stdout) == {
        "volumes": [{"volume": "vg0/lv1", "metadata_size": 64 * MiB, "before": 64 * MiB,
                     "size": 64 * MiB, "refreshed": False}], "skipped": []}
    missing = autoextend("--config", str(cfg), "volume", "prepare", "--direct", "vg0/nope")
    assert missing.code == 1 and "vg0/nope" in missing.error
    both = autoextend("--config", str(cfg), "volume", "prepare", "--direct", "--incoming",
                      "vm1")
    assert both.code == 2 and "not with --direct" in both.error
