"""``autoextend volume``: give space back (talks to the running service)."""

from __future__ import annotations

from typing import Any

import anyio
import click

from autoextend.cli.context import CliContext, echo_reply, pass_ctx


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
