"""``autoextend lab``: the one-machine lab by hand (guest image, thin volumes, booting a guest).

Thin volumes made here stay attached after the command exits (that is the point of making one
by hand); ``lab volume remove`` detaches and deletes them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import anyio
import click

from autoextend.cli.context import CliContext, pass_ctx
from autoextend.errors import LabError
from autoextend.lab import thinvol
from autoextend.lab.guest import GuestJob, GuestResult, Mode, Pattern, with_expected_md5
from autoextend.lab.guestimage import GuestImage, build_guest, default_cache_dir
from autoextend.lab.qemu import guest_spec, run_vm
from autoextend.lvm import loopdev

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"(\d+)\s*([bkmgt]?)(?:i?b)?\Z", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``64M``, ``1G``, ``1GiB``, ``512k`` or plain bytes -> bytes (binary units).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 64M, 1G, 1048576)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


class SizeType(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


SIZE = SizeType()


class LabCommandError(LabError):
    """A lab command could not do what was asked (no such volume, guest failed...)."""


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for key, value in data.items():
            click.echo(f"{key}: {value}")


@click.group("lab")
def lab() -> None:
    """One-machine lab: guests, thin volumes, QEMU and libvirtd by hand."""


@lab.command("build-guest")
@click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help=f"Where the guest is cached (default {default_cache_dir()}, "
                   "or $AUTOEXTEND_LAB_CACHE).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def build_guest_cmd(obj: CliContext, cache_dir: Path | None, as_json: bool) -> None:
    """Build the lab guest (Debian cloud kernel + busybox initramfs) unless it is cached."""
    obj.setup_logs()
    image = anyio.run(build_guest, cache_dir)
    _emit(_image_data(image), as_json)


def _image_data(image: GuestImage) -> dict[str, Any]:
    return {"kernel": str(image.kernel), "initrd": str(image.initrd),
            "kernel_version": image.kernel_version, "key": image.key}


@lab.group("volume")
def volume() -> None:
    """Thin volumes: a sparse file on a loop device holding a qcow2 image."""


@volume.command("create")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--size", type=SIZE, default="64M", show_default=True,
              help="Volume (\"LV\") size: the loop device size.")
@click.option("--virtual-size", type=SIZE, default="1G", show_default=True,
              help="qcow2 virtual size the guest sees.")
@click.option("--sector-size", type=click.Choice(["512", "4096"]), default="512",
              show_default=True, help="Logical sector size of the loop device.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def volume_create(obj: CliContext, path: Path, size: int, virtual_size: int, sector_size: str,
                  as_json: bool) -> None:
    """Create PATH, attach it to a loop device and put a qcow2 on it (stays attached)."""
    obj.setup_logs()
    try:
        vol = anyio.run(lambda: thinvol.create(path, size, virtual_size,
                                               sector_size=int(sector_size)))
    except FileExistsError:
        raise click.BadParameter(f"{path} already exists", param_hint="PATH") from None
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    _emit({"path": str(path.resolve()), "device": vol.device, "size": size,
           "virtual_size": virtual_size}, as_json)


async def _devices(path: Path) -> list[str]:
    if not await anyio.Path(path).exists():
        raise LabCommandError(f"no such volume file: {path}")
    devices = await loopdev.devices_for(path)
    if not devices:
        raise LabCommandError(f"{path} is not attached to a loop device")
    return devices


@volume.command("grow")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--by", type=SIZE, default=None, help="Grow by this much (e.g. 256M).")
@click.option("--to", "to_size", type=SIZE, default=None, help="Grow to this size.")
@pass_ctx
def volume_grow(obj: CliContext, path: Path, by: int | None, to_size: int | None) -> None:
    """Grow PATH (truncate) and make its loop devices see it (losetup -c). Never shrinks."""
    obj.setup_logs()
    if (by is None) == (to_size is None):
        raise click.UsageError("give exactly one of --by or --to")

    async def grow() -> int:
        devices = await _devices(path)
        current = (await anyio.Path(path).stat()).st_size
        target = current + by if by is not None else max(current, to_size or 0)
        if target > current:
            await anyio.to_thread.run_sync(os.truncate, path, target)
        for device in devices:
            await loopdev.set_capacity(device)
        return target

    click.echo(f"{path}: {anyio.run(grow)} bytes")


@volume.command("remove")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@pass_ctx
def volume_remove(obj: CliContext, path: Path) -> None:
    """Detach PATH's loop devices and delete PATH."""
    obj.setup_logs()

    async def remove() -> list[str]:
        devices = await _devices(path) if await anyio.Path(path).exists() else []
        for device in devices:
            await loopdev.detach(device)
        await anyio.Path(path).unlink(missing_ok=True)
        return devices

    devices = anyio.run(remove)
    click.echo(f"removed {path}" + (f" (detached {', '.join(devices)})" if devices else ""))


@volume.command("info")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def volume_info(obj: CliContext, path: Path, as_json: bool) -> None:
    """Size, loop devices and qemu-img check of PATH."""
    obj.setup_logs()

    async def info() -> dict[str, Any]:
        devices = await _devices(path)
        check = await thinvol.qemu_img_check(devices[0], force_share=True)
        size = (await anyio.Path(path).stat()).st_size
        return {"path": str(path), "size": size, "devices": devices,
                "clean": check.clean, "image_end_offset": check.image_end_offset,
                "allocated_clusters": check.allocated_clusters}

    _emit(anyio.run(info), as_json)


@lab.command("boot")
@click.option("--volume", "volumes", type=click.Path(path_type=Path, dir_okay=False),
              multiple=True, required=True,
              help="Volume file (attached, see 'lab volume create'); repeat for vdb, vdc...")
@click.option("--mib", type=click.IntRange(0), default=64, show_default=True,
              help="MiB to write (and verify).")
@click.option("--rate", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Write rate in MiB/s (0: as fast as possible).")
@click.option("--pattern", type=click.Choice([p.value for p in Pattern]), default="counter",
              show_default=True)
@click.option("--seed", type=click.IntRange(0, 10**9), default=1, show_default=True)
@click.option("--device", default="/dev/vda", show_default=True, help="Guest device to use.")
@click.option("--offset-mib", type=click.IntRange(0), default=0, show_default=True)
@click.option("--verify-only", is_flag=True, help="Only read back and verify (no write).")
@click.option("--timeout", type=click.FloatRange(1), default=600.0, show_default=True,
              help="Seconds to wait for the guest's result.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where QMP socket and serial log go (default: a new dir in /var/tmp).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def boot(obj: CliContext, volumes: tuple[Path, ...], mib: int, rate: float, pattern: str,
         seed: int, device: str, offset_mib: int, verify_only: bool, timeout: float,
         workdir: Path | None, as_json: bool) -> None:
    """Boot the lab guest on VOLUMEs, run one write/verify job, print its result.

    Exits 1 when the guest reports that verification failed.
    """
    obj.setup_logs()
    try:
        job = GuestJob(mib=mib, rate_kib_s=round(rate * 1024), pattern=Pattern(pattern),
                       seed=seed, device=device, offset_mib=offset_mib,
                       mode=Mode.VERIFY if verify_only else Mode.WRITE)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    directory = workdir or Path(os.path.join("/var/tmp", f"ae-boot-{os.getpid()}"))

    async def run() -> GuestResult:
        image = await build_guest()
        devices = [(await _devices(path))[0] for path in volumes]
        full_job = await anyio.to_thread.run_sync(with_expected_md5, job)
        spec = guest_spec("lab-boot", image, devices, full_job)
        async with run_vm(spec, directory) as vm:
            result = await vm.result(timeout=timeout)
            await vm.wait_exit(30)
            return result

    result = anyio.run(run)
    _emit({"verified": result.verified, "written_mib": result.written_mib,
           "md5": result.md5, "expected_md5": result.expected_md5, "boot_s": result.boot_s,
           "write_s": result.write_s, "verify_s": result.verify_s,
           "error": result.error, "serial_log": str(directory / "serial.log")}, as_json)
    if not result.verified:
        raise LabCommandError(f"guest verification failed ({result.error})")
