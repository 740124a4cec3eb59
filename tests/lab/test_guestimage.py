"""The guest image builder: cache layout, idempotence, concurrent builders, archive contents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from autoextend.lab.cpio import CpioWriter
from autoextend.lab.guest_init import MODULES, render_init
from autoextend.lab.guestimage import (
    GuestImage,
    build_guest,
    image_key,
    kernel_version_of,
    parse_kernel_package,
)


def test_parse_kernel_package() -> None:
    text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
    assert parse_kernel_package(text) == "linux-image-6.1.0-56-cloud-amd64"
    assert kernel_version_of("linux-image-6.1.0-56-cloud-amd64") == "6.1.0-56-cloud-amd64"
    with pytest.raises(ValueError):
        parse_kernel_package("linux-image-cloud-amd64\n")


def test_image_key_changes_with_each_input() -> None:
    base = image_key("init", "bb", "6.1")
    assert base == image_key("init", "bb", "6.1")
    assert len({base, image_key("init2", "bb", "6.1"), image_key("init", "bb2", "6.1"),
                image_key("init", "bb", "6.2")}) == 4


def test_init_script_is_valid_shell() -> None:
    script = render_init()
    assert "__MODULES__" not in script
    names = [m.rsplit("/", 1)[1].removesuffix(".ko") for m in MODULES]
    assert " ".join(names) in script
    subprocess.run(["busybox", "sh", "-n", "-c", script], check=True)


def test_cpio_archive_unpacks_with_gnu_cpio(tmp_path: Path) -> None:
    writer = CpioWriter()
    writer.directory("bin")
    writer.file("bin/hello", b"hi\n", mode=0o755)
    writer.symlink("bin/sh", "hello")
    writer.char_device("console", 5, 1)
    archive = writer.finish()
    assert len(archive) % 4 == 0
    listing = subprocess.run(["cpio", "-t", "-v"], input=archive, capture_output=True,
                             check=True).stdout.decode()
    assert "bin/hello" in listing and "bin/sh -> hello" in listing
    assert "5,   1" in listing
    subprocess.run(["cpio", "-i", "-d", "--no-absolute-filenames", "--quiet"],
                   input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "bin" / "hello").read_bytes() == b"hi\n"


async def test_concurrent_builds_agree_and_leave_no_temp_dirs(
    lab_guest: GuestImage, lab_tmp_path: Path
) -> None:
    cache = lab_tmp_path / "cache"
    cache.mkdir()
    # reuse the downloaded kernel so this test needs no download
    kernel_dirs = [p for p in lab_guest.directory.parent.iterdir()
                   if p.name.startswith("kernel-")]
    shutil.copytree(kernel_dirs[0], cache / kernel_dirs[0].name)
    images: list[GuestImage] = []

    async def build() -> None:
        images.append(await build_guest(cache))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(build)
    assert len({image.directory for image in images}) == 1
    assert images[0].key == lab_guest.key
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [kernel_dirs[0].name, f"guest-{lab_guest.key}"])
    assert images[0].initrd.read_bytes() == lab_guest.initrd.read_bytes()  # reproducible
    again = await build_guest(cache)
    assert again == images[0]
