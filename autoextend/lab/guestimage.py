"""Build (once) and find the lab guest: a Debian cloud kernel and a busybox initramfs.

Layout under the cache directory (default ``/var/cache/autoextend/lab``)::

    kernel-<version>/vmlinuz, kernel-<version>/modules/<name>.ko   (from the .deb, not installed)
    guest-<key>/vmlinuz, guest-<key>/initrd.img, guest-<key>/manifest.json

``<key>`` hashes the init script, the module list, busybox and the kernel version, so a change
to any of them builds a new image and an unchanged one is found without running anything.
Every directory is built under a temporary name and renamed into place, so concurrent builders
never see half an image and the loser of a race just uses the winner's.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio

from autoextend import logs
from autoextend.lab import proc
from autoextend.lab.cpio import CpioWriter
from autoextend.lab.errors import CommandError, GuestBuildError
from autoextend.lab.guest_init import MODULES, render_init

log = logs.get_logger("lab.guest")

DEFAULT_CACHE_DIR = Path("/var/cache/autoextend/lab")
CACHE_ENV = "AUTOEXTEND_LAB_CACHE"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
_DEPENDS_RE = re.compile(r"Depends:\s*(linux-image-[0-9][^\s<>]*-cloud-amd64)\b")


@dataclass(frozen=True)
class GuestImage:
    """A built guest: boot it with ``-kernel kernel -initrd initrd``."""

    kernel: Path
    initrd: Path
    kernel_version: str
    key: str
    directory: Path


def default_cache_dir() -> Path:
    """``$AUTOEXTEND_LAB_CACHE`` if set, else ``/var/cache/autoextend/lab``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_CACHE_DIR


def parse_kernel_package(apt_cache_depends: str) -> str:
    """The versioned kernel package ``apt-cache depends linux-image-cloud-amd64`` names.

    Raises:
        ValueError: no such dependency in the text.
    """
    found = _DEPENDS_RE.findall(apt_cache_depends)
    if not found:
        raise ValueError(f"no linux-image-*-cloud-amd64 dependency in {apt_cache_depends!r}")
    return str(sorted(found)[-1])


def kernel_version_of(package: str) -> str:
    """``linux-image-6.1.0-56-cloud-amd64`` -> ``6.1.0-56-cloud-amd64``."""
    return package.removeprefix("linux-image-")


def image_key(init_script: str, busybox_digest: str, kernel_version: str) -> str:
    """The cache key of a guest image (pure: changes when any input changes)."""
    h = hashlib.sha256()
    for part in (init_script, "\n".join(MODULES), busybox_digest, kernel_version):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise GuestBuildError("busybox", f"cannot read {path}: {err.strerror} "
                              "(apt-get install busybox-static)") from err


def _find_cached(cache: Path, prefix: str) -> list[Path]:
    if not cache.is_dir():
        return []
    return sorted(
        p for p in cache.iterdir()
        if p.name.startswith(prefix) and (p / "manifest.json").is_file()
    )


async def _kernel_package() -> str:
    command = ["apt-cache", "depends", KERNEL_META_PACKAGE]
    try:
        return parse_kernel_package(await proc.run(command))
    except (CommandError, ValueError):
        log.info("apt-cache has no cloud kernel; running apt-get update")
        await proc.run(["apt-get", "update", "-q"])
        try:
            return parse_kernel_package(await proc.run(command))
        except ValueError as err:
            raise GuestBuildError("kernel package", str(err)) from err


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temp dir into place; if someone else got there first, keep theirs."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not (final / "manifest.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


async def ensure_kernel(cache: Path) -> Path:
    """A directory holding ``vmlinuz`` and the virtio modules; downloaded once."""
    cached = _find_cached(cache, "kernel-")
    if cached:
        return cached[-1]
    package = await _kernel_package()
    version = kernel_version_of(package)
    final = cache / f"kernel-{version}"
    if (final / "manifest.json").is_file():
        return final
    log.info("downloading guest kernel", package=package)
    tmp = Path(await anyio.to_thread.run_sync(
        lambda: tempfile.mkdtemp(prefix=".kernel-", dir=cache)))
    try:
        await proc.run(["apt-get", "download", "-q", package], cwd=tmp)
        debs = await anyio.to_thread.run_sync(lambda: sorted(tmp.glob("*.deb")))
        if not debs:
            raise GuestBuildError("kernel download", f"apt-get download {package} gave no .deb")
        unpacked = tmp / "root"
        await proc.run(["dpkg-deb", "-x", debs[0], unpacked])
        await anyio.to_thread.run_sync(_collect_kernel, unpacked, tmp, version)
        await anyio.to_thread.run_sync(_publish, tmp, final)
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return final


def _collect_kernel(unpacked: Path, out: Path, version: str) -> None:
    vmlinuz = unpacked / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise GuestBuildError("kernel unpack", f"{vmlinuz.name} not in the package")
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    (out / "modules").mkdir()
    base = unpacked / "lib" / "modules" / version / "kernel"
    for rel in MODULES:
        src = base / rel
        if not src.is_file():
            raise GuestBuildError("kernel unpack", f"module {rel} not in the package")
        shutil.copyfile(src, out / "modules" / src.name)
    shutil.rmtree(unpacked)
    for deb in out.glob("*.deb"):
        deb.unlink()
    (out / "manifest.json").write_text(json.dumps({"kernel_version": version}))
    os.chmod(out, 0o755)


def _write_initramfs(kernel_dir: Path, init_script: str, target: Path) -> None:
    writer = CpioWriter()
    for directory in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        writer.directory(directory)
    writer.char_device("dev/console", 5, 1, mode=0o600)
    writer.char_device("dev/null", 1, 3, mode=0o666)
    writer.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)
    writer.symlink("bin/sh", "busybox")
    writer.file("init", init_script.encode(), mode=0o755)
    for rel in MODULES:
        name = rel.rsplit("/", 1)[1]
        writer.file(f"lib/modules/{name}", (kernel_dir / "modules" / name).read_bytes())
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(writer.finish())


def _build_guest(kernel_dir: Path, init_script: str, key: str, version: str, cache: Path) -> Path:
    final = cache / f"guest-{key}"
    if (final / "manifest.json").is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".guest-", dir=cache))
    try:
        shutil.copyfile(kernel_dir / "vmlinuz", tmp / "vmlinuz")
        _write_initramfs(kernel_dir, init_script, tmp / "initrd.img")
        manifest = {"key": key, "kernel_version": version, "modules": list(MODULES)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o755)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _image_in(directory: Path) -> GuestImage:
    manifest = json.loads((directory / "manifest.json").read_text())
    return GuestImage(
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        kernel_version=str(manifest["kernel_version"]),
        key=str(manifest["key"]),
        directory=directory,
    )


async def build_guest(cache_dir: Path | None = None) -> GuestImage:
    """The guest image, built on first use and found in the cache afterwards.

    Safe to run from several processes at once. Raises :class:`GuestBuildError` or
    :class:`~autoextend.lab.errors.CommandError` when a step fails.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    init_script = render_init()
    busybox = await anyio.to_thread.run_sync(_file_digest, BUSYBOX)
    try:
        await anyio.to_thread.run_sync(lambda: cache.mkdir(parents=True, exist_ok=True))
    except OSError as err:
        raise GuestBuildError("cache", f"cannot create {cache}: {err.strerror}") from err
    kernel_dir = await ensure_kernel(cache)
    version = json.loads((kernel_dir / "manifest.json").read_text())["kernel_version"]
    key = image_key(init_script, busybox, version)
    final = cache / f"guest-{key}"
    if not (final / "manifest.json").is_file():
        log.info("building guest initramfs", key=key, kernel=version)
        final = await anyio.to_thread.run_sync(
            _build_guest, kernel_dir, init_script, key, version, cache)
    return _image_in(final)
