"""Every config rule beyond one key's type and range, in one pure place (no I/O).

Two kinds of rules, both reported as ``(dotted key, message)`` through
:class:`~autoextend.errors.ConfigError` (one line, exit 2):

* :data:`VALUE_RULES` check values that no command can use whatever it does: a NUL byte in a
  path or name, a string longer in bytes than where it is stored (``sun_path``, the lease's
  host-name field), a ``*_initial`` delay above its ``*_max``. :func:`settings.from_mapping`
  applies them, so every command that loads a config file gets them.
* :data:`SERVICE_RULES` are what ``autoextend run`` needs from the file as a whole (the
  cross-section rules: ``volumes.backend = lvm`` needs ``lvm.pvs``, mailbox mode needs a lease
  path, a host id and the pool's VGs, ...). ``autoextend config check`` and ``autoextend run``
  both call :func:`check_service`, so a file that ``config check`` accepts is one ``run`` can
  use, and both print the same line for the same mistake.

Adding a rule: write ``def _my_rule(s: Settings) -> Iterator[Problem]`` that yields
``(key, message)`` for each problem, and append it to :data:`SERVICE_RULES` (or
:data:`VALUE_RULES` if it holds for every command). Nothing else needs to change.

What needs the machine (a path that exists, a port that is free, a formatted lease area) is not
checked here: it is the environment, found at start-up and reported with exit 1.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from autoextend.errors import ConfigError
from autoextend.lvm.config import PVS_MESSAGE
from autoextend.metadata_area import AREA_ALIGN, LEASE_AREA_SIZE, journal_end, mailbox_start
from autoextend.names import is_valid_name
from autoextend.spm.errors import LayoutError
from autoextend.spm.layout import ALIGNMENT, MailboxLayout
from autoextend.timeouts import check_timeouts

if TYPE_CHECKING:
    from autoextend.config import Settings
    from autoextend.lease.config import LeaseSettings
    from autoextend.spm.config import MailboxSettings

Problem = tuple[str, str]
Rule = Callable[["Settings"], Iterable[Problem]]

# struct sockaddr_un.sun_path is 108 bytes on Linux, the terminating NUL included.
SUN_PATH_MAX = 107
# The host-name field of a lease host id record (autoextend.lease.format.NAME_BYTES).
HOST_NAME_BYTES = 64

_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


# ---- value rules (every command) -------------------------------------------------------------


def _walk_strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    """Every string in a dumped model with its dotted key (dict keys count as strings)."""
    stack: list[tuple[str, Any]] = [(key, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            yield where, item
        elif isinstance(item, dict):
            for k, v in item.items():
                sub = f"{where}.{k}" if where else str(k)
                if isinstance(k, str):
                    yield sub, k
                stack.append((sub, v))
        elif isinstance(item, list | tuple):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))


def _no_nul(s: Settings) -> Iterator[Problem]:
    """Paths and names go to the kernel, lvm2 and the disk as C strings: a NUL cuts them."""
    for key, text in sorted(_walk_strings(s.model_dump(), "")):
        if "\0" in text:
            yield key, "must not contain a NUL byte"


def _byte_lengths(s: Settings) -> Iterator[Problem]:
    sock = s.service.control_socket
    if not sock:
        yield "service.control_socket", "must not be empty"
    elif len(sock.encode("utf-8", "surrogateescape")) > SUN_PATH_MAX:
        yield ("service.control_socket",
               f"is {len(sock.encode('utf-8', 'surrogateescape'))} bytes; a unix socket path"
               f" holds at most {SUN_PATH_MAX}")
    name = s.lease.host_name.encode("utf-8", "surrogateescape")
    if len(name) > HOST_NAME_BYTES:
        yield ("lease.host_name",
               f"is {len(name)} bytes in UTF-8; the lease record holds at most {HOST_NAME_BYTES}")


def _metrics_address(s: Settings) -> Iterator[Problem]:
    address = s.metrics.address
    if not address:
        return  # "" = every interface, as prometheus-client means it
    try:
        ipaddress.ip_address(address)
    except ValueError:
        if _HOSTNAME_RE.fullmatch(address) is None:
            yield "metrics.address", f"is neither an IP address nor a host name (got {address!r})"


def _initial_not_above_max(s: Settings) -> Iterator[Problem]:
    pairs = (
        ("policy", "retry_initial_s", "retry_max_s"),
        # (qmp and libvirt check their reconnect backoff in their own sections)
        ("mailbox", "reply_poll_interval_s", "reply_poll_max_s"),
        ("mailbox", "ring_retry_initial_s", "ring_retry_max_s"),
    )
    for section, low, high in pairs:
        sec = getattr(s, section)
        if getattr(sec, low) > getattr(sec, high):
            yield (f"{section}.{low}",
                   f"{getattr(sec, low)} is above {section}.{high} = {getattr(sec, high)}")


def _lvm_names(s: Settings) -> Iterator[Problem]:
    for vg in s.policy.vg_reserve_mib:
        if not is_valid_name(vg):
            yield f"policy.vg_reserve_mib.{vg}", "is not a valid VG name"
    for vg in s.capacity.vgs:
        if not is_valid_name(vg):
            yield f"capacity.vgs.{vg}", "is not a valid VG name"
    for i, rule in enumerate(s.policy.overrides):
        for field in ("vg", "lv"):
            name = getattr(rule, field, None)
            if name is not None and not is_valid_name(name):
                yield f"policy.overrides[{i}].{field}", f"is not a valid LVM name (got {name!r})"


VALUE_RULES: list[Rule] = [_no_nul, _byte_lengths, _metrics_address, _initial_not_above_max,
                           _lvm_names]


# ---- service rules (run and config check) ----------------------------------------------------


def _volume_backend(s: Settings) -> Iterator[Problem]:
    if s.volumes.backend == "lvm" and not s.lvm.pvs:
        yield "lvm.pvs", PVS_MESSAGE


def mailbox_mode_rule(s: Settings) -> Iterator[Problem]:
    if s.service.extender == "mailbox":
        yield from cluster_rule(s.lease, s.mailbox, s.lvm.vgs)


def cluster_rule(lease: LeaseSettings, mailbox: MailboxSettings,
                 vgs: Sequence[str]) -> Iterator[Problem]:
    """What mailbox mode needs from its own sections: THE rule, applied by ``run`` and
    ``config check`` (:func:`mailbox_mode_rule`) and by ``ClusterAgent``, which is given only
    these sections and refuses what it cannot run with."""
    if not lease.path:
        yield "lease.path", "must name the shared metadata area for service.extender = mailbox"
    if lease.host_id < 1:
        yield "lease.host_id", "must be 1..lease.max_hosts for service.extender = mailbox"
    if not vgs:
        yield "lvm.vgs", "must list the pool's VGs for service.extender = mailbox"
    if mailbox.path and mailbox.path != lease.path:
        yield "mailbox.path", "must be empty or equal to lease.path (one metadata area)"
    if lease.host_id > mailbox.max_hosts:
        yield ("mailbox.max_hosts",
               f"{mailbox.max_hosts} leaves lease.host_id {lease.host_id} without a mailbox")
    yield from _mailbox_region(lease, mailbox)
    yield from _journal_region(lease, mailbox)


def _mailbox_region(lease: LeaseSettings, mailbox: MailboxSettings) -> Iterator[Problem]:
    offset = mailbox.offset
    if offset is None:
        return
    if offset % ALIGNMENT:
        yield "mailbox.offset", f"must be a multiple of {ALIGNMENT} (got {offset})"
        return
    try:
        # The smallest the region can be (512-byte sectors): overlap there is overlap always.
        end = MailboxLayout(offset, lease.sector_size or 512, mailbox.max_hosts).end
    except LayoutError as exc:
        yield "mailbox.offset", str(exc)
        return
    lease_start = lease.offset
    if offset < lease_start + LEASE_AREA_SIZE and end > lease_start:
        yield ("mailbox.offset",
               f"the mailbox ({offset}..{end}) overlaps the lease area"
               f" ({lease_start}..{lease_start + LEASE_AREA_SIZE})")


def _journal_region(lease: LeaseSettings, mailbox: MailboxSettings) -> Iterator[Problem]:
    """A configured journal offset: 1 MiB aligned, clear of the lease area and the mailbox
    (at its largest for max_hosts: 4 KiB sectors)."""
    start = mailbox.journal_offset
    if start is None:
        return
    if start % AREA_ALIGN:
        yield "mailbox.journal_offset", f"must be a multiple of {AREA_ALIGN} (got {start})"
        return
    end = journal_end(start)
    lease_start = lease.offset
    box = mailbox_start(mailbox.offset, lease_start)
    box_end = max(MailboxLayout(box, size, mailbox.max_hosts).end for size in (512, 4096))
    for what, first, last in (("the lease area", lease_start, lease_start + LEASE_AREA_SIZE),
                              ("the mailbox", box, box_end)):
        if start < last and end > first:
            yield ("mailbox.journal_offset",
                   f"the journal ({start}..{end}) overlaps {what} ({first}..{last})")


# check_timeouts: an extension must outlast one SPM failover (autoextend/timeouts.py).
SERVICE_RULES: list[Rule] = [_volume_backend, mailbox_mode_rule, check_timeouts]


# ---- entry points ------------------------------------------------------------------------------


def problems(settings: Settings, rules: Iterable[Rule]) -> list[Problem]:
    """Every problem ``rules`` find, in rule order."""
    return [p for rule in rules for p in rule(settings)]


def value_problems(settings: Settings) -> list[Problem]:
    return problems(settings, VALUE_RULES)


def service_problems(settings: Settings) -> list[Problem]:
    return problems(settings, SERVICE_RULES)


def check_service(settings: Settings, source: str = "<settings>") -> None:
    """Raise :class:`ConfigError` naming every problem ``autoextend run`` would have with
    ``settings``; ``source`` names the file in the message."""
    found = service_problems(settings)
    if found:
        raise ConfigError(source, found)
