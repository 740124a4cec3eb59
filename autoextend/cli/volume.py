"""``autoextend volume``: give space back (talks to the running service)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import click

from autoextend.cli.context import CliContext, echo_reply, pass_ctx
from autoextend.errors import AutoextendError

F = TypeVar("F", bound=Callable[..., Any])


@click.group("volume")
def volume() -> None:
    """Volumes of the pool: give unused space back."""


def _mib(n: Any) -> str:
    return f"{int(n) / (1 << 20):.1f} MiB"


def _render(plan: dict[str, Any]) -> str:
    head = (f"{plan['volume']}: {_mib(plan['size'])}, image end {_mib(plan['image_end'])},"
            f" target {_mib(plan['target'])}")
    if plan["target"] >= plan["size"]:
        return f"{head}: nothing to give back"
    if plan["dry_run"]:
        return f"{head}: would give back {_mib(plan['size'] - plan['target'])} (dry run)"
    done = f"{head}: reduced to {_mib(plan['new_size'])}, gave back {_mib(plan['given_back'])}"
    return f"{done} ({plan['note']})" if plan.get("note") else done


def _volume_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from autoextend.capacity.reduce import parse_volume

    try:
        parse_volume(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@volume.command("reduce")
@click.argument("vg_lv", metavar="VG/LV", callback=_volume_arg)
@click.option("--dry-run", is_flag=True,
              help="Compute the target size and ask the SPM's verdict; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def volume_reduce(obj: CliContext, vg_lv: str, dry_run: bool, as_json: bool) -> None:
    """Reduce VG/LV to its image's end plus one chunk (rounded up to the extent).

    Refused (exit 1, one line) while any VM or process on this host has the volume open, or
    (mailbox mode) while any host asked to extend it within the SPM's hot window, or the SPM
    took over within it. A dry run asks the SPM the same questions. After a refusal or no
    answer the line says the volume's size now (exit 0 if it was reduced anyway).

    \b
    Example:
      autoextend volume reduce pool/vm1-disk --dry-run
    """
    from autoextend import control

    settings = obj.load_settings()
    path = settings.service.control_socket
    result = anyio.run(lambda: control.call_dict(path, "volume_reduce", wait_s=310.0,
                                                 volume=vg_lv, dry_run=dry_run))
    echo_reply(path, result, _render, as_json)


def _render_created(r: dict[str, Any]) -> str:
    return f"{r['volume']}: {r['text']}, {_mib(r['size'])}"


def _render_removed(r: dict[str, Any]) -> str:
    return f"{r['volume']}: {r['text']}"


def _size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from autoextend.cli.pool import parse_size

    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@volume.command("create")
@click.argument("vg_lv", metavar="VG/LV", callback=_volume_arg)
@click.option("--capacity", required=True, callback=_size_option, metavar="SIZE",
              help="The disk's virtual size (the guest's disk size): bytes, or with "
                   "K/M/G/T (binary).")
@click.option("--size", callback=_size_option, metavar="SIZE", default=None,
              help="Initial allocation; the LV gets it plus 10 % for qcow2 metadata "
                   "(default: one chunk, at most the capacity plus 10 %).")
@click.option("--parent", default=None, metavar="LV",
              help="Make a snapshot LV: the LV for a qcow2 overlay on LV (BASE or VG/BASE, "
                   "same VG); tagged autoextend.parent=BASE. The capacity must be at least "
                   "the parent's.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def volume_create(obj: CliContext, vg_lv: str, capacity: int, size: int | None,
                  parent: str | None, as_json: bool) -> None:
    """Create VG/LV for a thin qcow2 disk, through the pool's one writer.

    Mailbox mode: the SPM creates it (from any host); local mode: this host's writer.
    The LV is tagged with its capacity (autoextend.vsize=), its owner and the request, and
    left inactive. Asking again after a lost answer finds it done. Refused (exit 1, one
    line) when another volume has that name.

    With --parent the LV is a snapshot LV for a qcow2 overlay on the parent (the overlay
    itself is made with qemu-img where the LV is active); the parent must exist.

    \b
    Examples:
      autoextend volume create pool/vm1-disk --capacity 20G --size 1G
      autoextend volume create pool/vm1-snap1 --parent vm1-disk --capacity 20G
    """
    from autoextend import control

    if size is not None and size > capacity:
        raise click.BadParameter(f"{size} B is more than the capacity ({capacity} B)",
                                 param_hint="--size")
    settings = obj.load_settings()
    path = settings.service.control_socket
    result = anyio.run(lambda: control.call_dict(path, "volume_create", wait_s=310.0,
                                                 volume=vg_lv, capacity=capacity, size=size,
                                                 parent=parent))
    echo_reply(path, result, _render_created, as_json)


@volume.command("remove")
@click.argument("vg_lv", metavar="VG/LV", callback=_volume_arg)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def volume_remove(obj: CliContext, vg_lv: str, as_json: bool) -> None:
    """Remove VG/LV through the pool's one writer.

    Refused (exit 1, one line naming where) while a VM or a process on this host has it
    open, or (mailbox mode) while any live host lists it in its in-use record, or a host's
    record cannot say. A volume that is not there is reported, not an error.

    \b
    Example:
      autoextend volume remove pool/vm1-disk
    """
    from autoextend import control

    settings = obj.load_settings()
    path = settings.service.control_socket
    result = anyio.run(lambda: control.call_dict(path, "volume_remove", wait_s=310.0,
                                                 volume=vg_lv))
    echo_reply(path, result, _render_removed, as_json)


PREPARE_TIMEOUT_S = 60.0  # the hook's bound: a VM start never waits longer on autoextend


def _domain_paths(xml: str, name: str) -> list[str]:
    """The source paths of the domain's writable qcow2 block disks (what autoextend manages);
    the XML must be the named domain's."""
    import xml.etree.ElementTree as ET

    from autoextend.libvirt_backend.domxml import DomainXmlError, parse_disks

    try:
        disks = parse_disks(xml)
        found = ET.fromstring(xml).findtext("name", "")
    except DomainXmlError as exc:
        raise click.BadParameter(str(exc), param_hint="--domain-xml") from None
    if found != name:
        raise click.BadParameter(f"the XML is domain {found[:64]!r}, not {name[:64]!r}",
                                 param_hint="--domain-xml")
    return [d.path for d in disks if d.monitorable and d.path]


def _libvirt_xml(uri: str, name: str) -> str:
    """The named domain's XML from libvirt (read-only). Never from a libvirt hook: libvirt
    waits for the hook, so a call back into it can deadlock (the hook passes the XML)."""
    import libvirt

    # libvirt's default handler prints each error to stderr too: one line, ours, is enough.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError as exc:
        raise AutoextendError(f"libvirt {uri}: {exc.get_error_message()}") from None
    try:
        return str(conn.lookupByName(name).XMLDesc(0))
    except libvirt.libvirtError as exc:
        raise AutoextendError(f"VM {name[:64]}: {exc.get_error_message()}") from None
    finally:
        conn.close()


def _render_prepared(result: dict[str, Any]) -> str:
    lines = []
    for v in result["volumes"]:
        what = (f"refreshed from {_mib(v['before'])}" if v["refreshed"] else "up to date")
        lines.append(f"{v['volume']}: {what}, sees {_mib(v['size'])}"
                     f" (metadata {_mib(v['metadata_size'])})")
    lines.extend(f"{p}: not a volume of this pool, skipped" for p in result["skipped"])
    return "\n".join(lines) or "nothing to prepare"


def service_call_options(max_timeout_s: float) -> Callable[[F], F]:
    """``--socket`` and ``--timeout``: the options of a command that asks the service."""
    def apply(f: F) -> F:
        f = click.option("--timeout", type=click.FloatRange(min=0.1, max=max_timeout_s),
                         default=PREPARE_TIMEOUT_S, show_default=True,
                         help="Give up (exit 1) after this many seconds.")(f)
        return click.option("--socket", "socket_path", default=None,
                            help="The service's control socket (default: the config's).")(f)
    return apply


@volume.command("prepare")
@click.argument("targets", metavar="VM-NAME | VG/LV ...", nargs=-1, required=True)
@click.option("--domain-xml", type=click.File("r"), default=None,
              help="The VM's libvirt XML (- for stdin: what a libvirt hook gets); without it "
                   "a VM's XML is read from libvirt.")
@service_call_options(max_timeout_s=300.0)
@click.option("--quiet", is_flag=True,
              help="Print nothing on success (a libvirt migrate hook's stdout replaces the "
                   "domain XML).")
@click.option("--incoming", is_flag=True,
              help="The VM arrives by live migration: also keep its views up to date until "
                   "it runs here (the hook's migrate begin).")
@click.option("--direct", is_flag=True,
              help="Refresh the views in this process, without the service (down or frozen "
                   "as it may be): for a management that prepares a migration's destination "
                   "after the switchover and before it resumes the guest there. Never on a "
                   "host the VM migrates out of (the service's frozen-view check is skipped).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def volume_prepare(obj: CliContext, targets: tuple[str, ...], domain_xml: Any,
                   socket_path: str | None, timeout: float, quiet: bool, incoming: bool,
                   direct: bool, as_json: bool) -> None:
    """Refresh this host's views of the volumes before a guest starts on them.

    Returns once this host sees each volume at least at its size in the metadata (an LV
    extended by another host while this host kept it active is refreshed). Fails (exit 1,
    one line) when the service is not running, a volume does not exist, or a view stays
    stale: do not start the guest then. A TARGET with a "/" is a volume; anything else is a
    VM, whose writable qcow2 block disks are prepared.

    \b
    Examples:
      autoextend volume prepare pool/vm1-disk pool/vm1-data   # before starting QEMU
      autoextend volume prepare vm1                          # a libvirt VM, by name
      autoextend volume prepare --domain-xml - vm1 < vm1.xml  # what the libvirt hook runs
      autoextend volume prepare --direct pool/vm1-disk  # QMP migration, destination, paused
    """
    from autoextend import control
    from autoextend.capacity.reduce import parse_volume

    volumes, vms = [], []
    for target in targets:
        if "/" in target:
            try:
                parse_volume(target)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="VG/LV") from None
            volumes.append(target)
        else:
            vms.append(target)
    if domain_xml is not None and len(vms) != 1:
        raise click.BadParameter("give exactly one VM-NAME with it", param_hint="--domain-xml")
    if incoming and len(vms) != 1:
        raise click.BadParameter("give exactly one VM-NAME with it", param_hint="--incoming")
    if incoming and direct:
        raise click.BadParameter("the incoming watch is the service's: not with --direct",
                                 param_hint="--incoming")
    settings = obj.load_settings()
    path = socket_path or settings.service.control_socket
    paths: list[str] = []
    for name in vms:
        if domain_xml is not None:
            xml = domain_xml.read(1 << 24)
        else:
            xml = _libvirt_xml(settings.libvirt.uri, name)
        paths.extend(_domain_paths(xml, name))

    if direct:
        result = anyio.run(_prepare_direct, settings, volumes, paths, timeout)
        if not quiet:
            echo_reply("(direct)", result, _render_prepared, as_json)
        return

    async def ask() -> dict[str, Any]:
        with anyio.fail_after(timeout):
            return await control.call_dict(path, "volume_prepare", wait_s=timeout,
                                           volumes=volumes, paths=paths,
                                           incoming_vm=vms[0] if incoming else "")

    try:
        result = anyio.run(ask)
    except TimeoutError:
        raise AutoextendError(f"volume prepare: no answer within {timeout:g} s") from None
    if not quiet:
        echo_reply(path, result, _render_prepared, as_json)


async def _prepare_direct(settings: Any, volumes: list[str], paths: list[str],
                          limit_s: float) -> dict[str, Any]:
    """``volume prepare --direct``: the refresh in this process (``prepare.prepare_targets``)
    on the configured backend, with no right to write metadata."""
    from autoextend import prepare
    from autoextend.capacity.reduce import parse_volume
    from autoextend.lvm.factory import make_volume_backend

    backend = make_volume_backend(settings.volumes, settings.lvm, None)
    try:
        with anyio.fail_after(limit_s):
            return await prepare.prepare_targets(
                backend, [parse_volume(v) for v in volumes], paths)
    except TimeoutError:
        raise AutoextendError(f"volume prepare: not done within {limit_s:g} s") from None
    finally:
        await backend.aclose()


def _render_merge(r: dict[str, Any]) -> str:
    head = (f"{r['vm']}: merge {r['top']} into {r['base']} ({r['volume']}): needs"
            f" {_mib(r['need'])}, base target {_mib(r['target'])}")
    if r["dry_run"] and r["target"] > r["size"]:
        return f"{head}: would extend from {_mib(r['size'])} (dry run)"
    if r["extended"]:
        return f"{head}: extended from {_mib(r['before'])} to {_mib(r['size'])}"
    return f"{head}: has room ({_mib(r['size'])})"


@volume.command("prepare-merge")
@click.argument("vm", metavar="VM-NAME")
@click.argument("drive", metavar="DRIVE")
@click.option("--base", type=click.IntRange(min=0, max=(1 << 31) - 1), default=None,
              metavar="N", help="The index of the image to merge into (the N of vda[N]); "
                                "default: the image right below the top.")
@service_call_options(max_timeout_s=600.0)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def volume_prepare_merge(obj: CliContext, vm: str, drive: str, base: int | None,
                         socket_path: str | None, timeout: float, as_json: bool) -> None:
    """Grow a snapshot merge's base before the merge starts (libvirt).

    DRIVE is the top of the merge: vda[N] for image N of vda's backing chain (deleting an
    older snapshot: a non-active blockcommit), or vda for the active image (an active
    commit). Returns once the base volume holds what the merge needs (qemu-img measure of
    the top, plus the watermark), so the commit cannot stop for lack of space. Fails (exit
    1, one line) for an unknown VM, drive or image: do not start the merge then.

    \b
    Examples:
      autoextend volume prepare-merge vm1 'vda[2]'            # then: virsh blockcommit
      autoextend volume prepare-merge vm1 'vda[3]' --base 1   #   vm1 vda --top vda[3] ...
    """
    from autoextend import control

    settings = obj.load_settings()
    path = socket_path or settings.service.control_socket

    async def ask() -> dict[str, Any]:
        with anyio.fail_after(timeout):
            return await control.call_dict(path, "merge_prepare", wait_s=timeout,
                                           vm=vm, drive=drive, base=base)

    try:
        result = anyio.run(ask)
    except TimeoutError:
        raise AutoextendError(f"volume prepare-merge: no answer within {timeout:g} s") from None
    echo_reply(path, result, _render_merge, as_json)
