"""pytest plugin: lab fixtures (guest, thin volumes, QEMU VMs, libvirtd) and a leftover check.

Register it from ``tests/conftest.py`` with ``pytest_plugins = ["autoextend.lab.fixtures"]``.

Fixtures:
    lab_dir          session: this session's scratch directory under /var/tmp (O_DIRECT works
                     there, unlike tmpfs); short paths, so QMP sockets fit in sun_path
    lab_tmp_path     function: a fresh directory under ``lab_dir``
    lab_guest        session: the built :class:`~autoextend.lab.guestimage.GuestImage`
    thin_volume      function: ``await thin_volume(size=64 MiB, virtual_size=1 GiB, ...)``
    qemu_vm          function: ``await qemu_vm(volumes_or_devices, job, ...)`` boots the guest;
                     ``await qemu_vm.start(spec)`` runs any :class:`VmSpec`
    libvirtd         session: a running isolated lab libvirtd (:class:`LabLibvirtd`)
    libvirtd_pair    session: two more, each with its own host UUID (migrations between them)

At session end every loop device backed by a file under the session's directories (``lab_dir``
and pytest's basetemp) and every QEMU/libvirtd/virtlogd process pointing there (or a child of
this process) is reported, cleaned up, and the run fails.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from autoextend.lab import leftovers, thinvol
from autoextend.lab.guest import GuestJob, with_expected_md5
from autoextend.lab.guestimage import GuestImage, build_guest
from autoextend.lab.libvirtd import LabLibvirtd, start_libvirtd
from autoextend.lab.qemu import QemuVm, VmSpec, guest_spec, launch
from autoextend.lab.thinvol import ThinVolume

MiB = 1 << 20
GiB = 1 << 30
LAB_ROOT_ENV = "AUTOEXTEND_LAB_TMPDIR"  # where session dirs go (default /var/tmp)
_ROOTS_KEY = pytest.StashKey[list[str]]()
_LAB_DIRS_KEY = pytest.StashKey[list[Path]]()


def _session_roots(config: pytest.Config) -> list[str]:
    return config.stash.setdefault(_ROOTS_KEY, [])


@pytest.fixture(scope="session")
def lab_dir(request: pytest.FixtureRequest) -> Path:
    """Removed at session end when nothing was left behind (kept for inspection otherwise)."""
    root = os.environ.get(LAB_ROOT_ENV, "/var/tmp")
    path = Path(tempfile.mkdtemp(prefix=f"ae-{os.getpid()}-", dir=root))
    _session_roots(request.config).append(str(path))
    request.config.stash.setdefault(_LAB_DIRS_KEY, []).append(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _lab_track_basetemp(request: pytest.FixtureRequest,
                        tmp_path_factory: pytest.TempPathFactory) -> None:
    _session_roots(request.config).append(str(tmp_path_factory.getbasetemp()))


_counter = itertools.count()


@pytest.fixture
def lab_tmp_path(lab_dir: Path, request: pytest.FixtureRequest) -> Path:
    name = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:20]
    path = lab_dir / f"{next(_counter)}-{name}"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
async def lab_guest() -> GuestImage:
    return await build_guest()


class ThinVolumeFactory:
    """Creates thin volumes in a test's directory; all are removed at teardown."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.volumes: list[ThinVolume] = []
        self._names = itertools.count()

    async def __call__(self, size: int = 64 * MiB, virtual_size: int = GiB, *,
                       sector_size: int = 512, name: str | None = None,
                       format_qcow2: bool = True) -> ThinVolume:
        path = self.directory / (name or f"vol{next(self._names)}.img")
        volume = await thinvol.create(path, size, virtual_size, sector_size=sector_size,
                                      format_qcow2=format_qcow2)
        self.volumes.append(volume)
        return volume

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for volume in reversed(self.volumes):
                await thinvol.remove(volume)


@pytest.fixture
async def thin_volume(lab_tmp_path: Path) -> AsyncIterator[ThinVolumeFactory]:
    factory = ThinVolumeFactory(lab_tmp_path)
    try:
        yield factory
    finally:
        await factory.close()


class QemuVmFactory:
    """Boots lab guests (``await qemu_vm(volumes, job)``) or any spec (``.start(spec)``);
    every VM is stopped at teardown (before the volumes it uses are removed)."""

    def __init__(self, directory: Path, guest: GuestImage) -> None:
        self.directory = directory
        self.guest = guest
        self.vms: list[QemuVm] = []
        self._names = itertools.count()

    async def __call__(self, volumes: Sequence[ThinVolume | str], job: GuestJob, *,
                       name: str | None = None, paused: bool = False,
                       precompute_md5: bool = True, **spec_kwargs: Any) -> QemuVm:
        """Boot the lab guest running ``job`` on ``volumes`` (vda, vdb, ...).

        ``precompute_md5`` hands the guest the expected digest (computed on the host), which
        halves its verify time under TCG; the guest still reads everything back.
        """
        if precompute_md5:
            job = await anyio.to_thread.run_sync(with_expected_md5, job)
        devices = [v.device if isinstance(v, ThinVolume) else v for v in volumes]
        vm_name = name or f"vm{next(self._names)}"
        spec = guest_spec(vm_name, self.guest, devices, job, paused=paused, **spec_kwargs)
        return await self.start(spec)

    async def start(self, spec: VmSpec) -> QemuVm:
        vm = await launch(spec, self.directory / spec.name)
        self.vms.append(vm)
        return vm

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for vm in reversed(self.vms):
                await vm.stop()


@pytest.fixture
async def qemu_vm(lab_tmp_path: Path, lab_guest: GuestImage,
                  thin_volume: ThinVolumeFactory) -> AsyncIterator[QemuVmFactory]:
    # depends on thin_volume so VMs are torn down before their volumes
    factory = QemuVmFactory(lab_tmp_path, lab_guest)
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture(scope="session")
async def libvirtd(lab_dir: Path) -> AsyncIterator[LabLibvirtd]:
    """A lab libvirtd for the whole session: connect with ``libvirtd.uri``. Domains the tests
    leave defined or running are destroyed when it stops."""
    daemon = await start_libvirtd(lab_dir / "libvirtd")
    try:
        yield daemon
    finally:
        await daemon.stop()


@pytest.fixture(scope="session")
async def libvirtd_pair(lab_dir: Path) -> AsyncIterator[tuple[LabLibvirtd, LabLibvirtd]]:
    """Two lab libvirtd daemons for the whole session (started side by side), each with its
    own host UUID and no cgroups, so that a domain can migrate from one to the other."""
    daemons: list[LabLibvirtd] = []

    async def start(name: str) -> None:
        daemons.append(await start_libvirtd(lab_dir / name))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(start, "libvirtd-a")
            tg.start_soon(start, "libvirtd-b")
        daemons.sort(key=lambda d: d.root.name)
        yield daemons[0], daemons[1]
    finally:
        with anyio.CancelScope(shield=True):
            for daemon in daemons:
                await daemon.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    roots = session.config.stash.get(_ROOTS_KEY, [])
    if not roots:
        return
    found = leftovers.find_leftovers(roots, parent=os.getpid())
    if not found:
        for lab_dir in session.config.stash.get(_LAB_DIRS_KEY, []):
            shutil.rmtree(lab_dir, ignore_errors=True)
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["lab leftover check FAILED: this test session left behind:"]
    lines += [f"  {item}" for item in found]
    lines.append("  (cleaned up now; the test that created them must clean up itself;"
                 " the session's files are kept for inspection)")
    text = "\n".join(lines)
    if reporter is not None:
        reporter.write_line(text, red=True)
    else:
        print(text)
    leftovers.clean_up(found)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED

