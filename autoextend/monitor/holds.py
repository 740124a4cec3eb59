"""The throttle's hold file: the write limits this service set, kept across a crash.

Why. The write throttle (``monitor/throttle.py``) reads a drive's own I/O limits before
it sets a write limit, and gives them back at the re-arm or at a clean stop. A service
killed (SIGKILL, OOM, a crash) while a drive is throttled gives nothing back: the limit
stays in QEMU, and the next service would read it as the drive's own and never lift it
(the guest stays slow for good). So each hold is written down before its limit is set
and struck out once it is lifted, and the next start gives back what is still recorded.

The record. One JSON file (``[service] state_dir``/``throttle-holds.json``; the default
state directory is the control socket's, ``/run/autoextend``, which a host's reboot
empties with the guests it held)::

    {"version": 1, "holds": [{"vm": "vm1", "drive": "vda", "volume": "vg0/lv1",
      "original": {"values": {"iops": 500}, "group": ""},
      "applied": {"values": {"bps_wr": 58720256, "iops": 500}, "group": "vda"}}]}

``original`` is what the drive had before, ``applied`` what the hypervisor showed after
the set (the limit first, then the read back). The whole file is replaced at each change
(written beside it, flushed, renamed over it: a reader sees the old or the new, never a
mix), before the set when a hold starts and after the lift when it ends, so a limit is
never on a drive without its record; a record may outlive its limit (a crash between the
lift and the write), which the start-up check below tells apart.

At start-up (:func:`recover`) the file is read before this run can throttle a drive
(:func:`read_left`: read later, it would also hold this run's own records, and a limit
just set would be lifted as a leftover). Then, for each record, once the hypervisor's
first discovery is done (:func:`settle_left`):

* the drive still has exactly ``applied`` (``IoLimits.matches``: a record of limits sent
  and not read back names no group, and its values decide): ``original`` is set again
  (logged);
* its limits differ (someone changed them while the service was down): they are left
  alone, with a warning;
* the VM or the drive is gone: the record is dropped;
* the VM is not found while the hypervisor has VMs it cannot name yet (a QMP socket that
  does not answer: another client holds it, or QEMU is busy): the record is kept, since
  the VM may be behind that socket;
* the hypervisor cannot answer now (disconnected): the record is kept; the throttle then
  takes ``original`` from it if it throttles that drive again (:meth:`HoldFile.adopt`).

A kept record is looked at again each time a VM connects (:func:`recheck`), until it is
settled by one of the rules above.

A file that cannot be read or parsed is a warning naming it, never a failed start: its
holds are then not restored (they are lifted by hand, as before this file existed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import anyio

from autoextend.errors import AutoextendError
from autoextend.monitor.protocols import Hypervisor, IoLimits, VmNotFound
from autoextend.monitor.vm import log

VERSION = 1
FILE_NAME = "throttle-holds.json"


@dataclass(frozen=True)
class HoldRecord:
    """One drive this service throttles, as written down."""

    vm: str
    drive: str
    volume: str
    original: IoLimits
    applied: IoLimits

    @property
    def key(self) -> tuple[str, str]:
        return self.vm, self.drive


class HoldFileError(AutoextendError):
    """The hold file cannot be read or does not hold what it should."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"throttle hold file {path}: {problem}")
        self.path = path
        self.problem = problem


def _limits_json(limits: IoLimits) -> dict[str, Any]:
    return {"values": dict(limits.values), "group": limits.group}


def _limits_of(raw: Any) -> IoLimits:
    if not isinstance(raw, dict) or not isinstance(raw.get("values"), dict):
        raise ValueError("limits must be an object with a 'values' object")
    values = raw["values"]
    group = raw.get("group", "")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
        raise ValueError("limit values must be integers")
    if not isinstance(group, str):
        raise ValueError("a limit group must be a string")
    return IoLimits.of(values, group)


def encode(records: list[HoldRecord]) -> str:
    """The file's text for ``records`` (pure)."""
    return json.dumps({"version": VERSION, "holds": [
        {"vm": r.vm, "drive": r.drive, "volume": r.volume,
         "original": _limits_json(r.original), "applied": _limits_json(r.applied)}
        for r in records]}, indent=1, sort_keys=True) + "\n"


def decode(text: str) -> list[HoldRecord]:
    """The records in a file's text (pure). Raises ValueError naming what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} hold file")
    holds = doc.get("holds")
    if not isinstance(holds, list):
        raise ValueError("'holds' must be a list")
    records = []
    for i, h in enumerate(holds):
        try:
            if not isinstance(h, dict) or not all(
                    isinstance(h.get(k), str) for k in ("vm", "drive", "volume")):
                raise ValueError("vm, drive and volume must be strings")
            records.append(HoldRecord(h["vm"], h["drive"], h["volume"],
                                      _limits_of(h.get("original")),
                                      _limits_of(h.get("applied"))))
        except ValueError as exc:
            raise ValueError(f"hold {i}: {exc}") from None
    return records


def _write(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (worker thread)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


class HoldFile:
    """The hold file of one monitor (``path``; None: nothing is written, as in unit tests
    that do not ask for it). Keeps the records in memory and writes them all at each
    change, one writer at a time."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.records: dict[tuple[str, str], HoldRecord] = {}
        #: Records the start-up check has not settled (yet, or the hypervisor did not
        #: answer): their drives' limits may still be a previous run's.
        self.unsettled: set[tuple[str, str]] = set()
        #: The record the start-up check is settling now: the throttle leaves it alone.
        self.busy: tuple[str, str] | None = None
        #: Records kept because their VM may be behind an unanswering socket (logged once).
        self.waiting: set[tuple[str, str]] = set()
        self._lock = anyio.Lock()
        self.settling = anyio.Lock()  # one pass of recover/recheck at a time
        #: A recheck waits for its pass: VMs that connect meanwhile need no pass of their own.
        self.recheck_queued = False

    async def load(self) -> list[HoldRecord]:
        """The records on disk (also kept in memory). Raises HoldFileError."""
        if self.path is None:
            return []
        path = self.path
        try:
            text = await anyio.to_thread.run_sync(_read, path)
        except OSError as exc:
            raise HoldFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
        if text is None:
            return []
        try:
            records = decode(text)
        except ValueError as exc:
            raise HoldFileError(path, str(exc)) from exc
        self.records = {r.key: r for r in records}
        self.unsettled = set(self.records)
        return records

    async def put(self, record: HoldRecord) -> None:
        self.records[record.key] = record
        self.unsettled.discard(record.key)
        await self._save()

    async def drop(self, vm: str, drive: str, only: HoldRecord | None = None) -> None:
        """Strike out the drive's record (``only``: unless it was replaced meanwhile)."""
        key = (vm, drive)
        rec = self.records.get(key)
        if rec is None or (only is not None and rec is not only):
            return
        self.unsettled.discard(key)
        self.waiting.discard(key)
        del self.records[key]
        await self._save()

    def forget(self, vm: str, drive: str) -> None:
        """The drive is gone: strike its record out with the next write (no I/O here)."""
        self.unsettled.discard((vm, drive))
        self.records.pop((vm, drive), None)

    def adopt(self, vm: str, drive: str, now: IoLimits) -> IoLimits:
        """The drive's own limits, given what it has ``now``: a record the start-up check
        could not settle whose limits the drive still has gives its ``original``."""
        rec = self.records.get((vm, drive))
        if rec is not None and (vm, drive) in self.unsettled and now.matches(rec.applied):
            log.info("throttle: the drive still has a limit a previous run set; its own "
                     "limits are taken from the hold file", vm=vm, drive=drive,
                     volume=rec.volume)
            return rec.original
        return now

    async def _save(self) -> None:
        """Write every record (never raises: a failed write is an error in the log; the
        throttle goes on, since a paused guest is worse than a limit left by a crash)."""
        if self.path is None:
            return
        async with self._lock:
            text = encode(list(self.records.values()))
            try:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_write, self.path, text)
            except OSError as exc:
                log.error("throttle: the hold file cannot be written; a limit this run "
                          "sets is not lifted after a crash", path=self.path,
                          error=exc.strerror or str(exc))


async def recover(holds: HoldFile, hv: Hypervisor, dry_run: bool) -> None:
    """The start-up check (module doc): :func:`read_left` then :func:`settle_left`.
    Never raises."""
    await settle_left(holds, hv, await read_left(holds), dry_run)


async def read_left(holds: HoldFile) -> list[HoldRecord]:
    """The start-up check's first half: the records a previous run left. Read before this
    run can throttle anything: read after, the file also holds this run's own records,
    and the check would take a limit just set for a guest as a previous run's leftover and
    lift it (seen under load: the read ran late, in a task started beside the monitor).
    Never raises (an unreadable file: no record, and a warning)."""
    try:
        return await holds.load()
    except HoldFileError as exc:
        log.warning("throttle: the hold file is unreadable; limits a previous run left on "
                    "drives are not restored (check the drives' I/O limits)",
                    path=exc.path, problem=exc.problem)
        return []


async def settle_left(holds: HoldFile, hv: Hypervisor, records: list[HoldRecord],
                      dry_run: bool) -> None:
    """The start-up check's second half: give back what ``records`` (from
    :func:`read_left`) left on the drives. Never raises."""
    await _settle(holds, hv, records, dry_run)


async def recheck(holds: HoldFile, hv: Hypervisor, dry_run: bool) -> None:
    """A VM connected: look again at the records start-up could not settle (module doc).
    Never raises. A recheck that has not started yet covers every VM that connects before
    it does (many VMs connect at once at start-up), so such calls return at once."""
    if holds.recheck_queued:
        return
    holds.recheck_queued = True
    async with holds.settling:
        holds.recheck_queued = False
        await _settle_locked(holds, hv, [holds.records[k] for k in list(holds.unsettled)
                                         if k in holds.records], dry_run)


async def _settle(holds: HoldFile, hv: Hypervisor, records: list[HoldRecord],
                  dry_run: bool) -> None:
    async with holds.settling:
        await _settle_locked(holds, hv, records, dry_run)


async def _settle_locked(holds: HoldFile, hv: Hypervisor, records: list[HoldRecord],
                         dry_run: bool) -> None:
    for rec in records:
        if holds.records.get(rec.key) is not rec or rec.key not in holds.unsettled:
            continue  # the throttle took it over meanwhile (HoldFile.adopt), or settled
        holds.busy = rec.key
        try:
            await _recover_one(holds, hv, rec, dry_run)
        except Exception as exc:  # noqa: BLE001 - one record never stops the others
            log.error("throttle: restoring a drive's limits from the hold file failed",
                      vm=rec.vm, drive=rec.drive, volume=rec.volume, error=repr(exc))
        finally:
            holds.busy = None


async def _recover_one(holds: HoldFile, hv: Hypervisor, rec: HoldRecord,
                       dry_run: bool) -> None:
    bound = log.bind(vm=rec.vm, drive=rec.drive, volume=rec.volume)
    try:
        info = next((i for i in await hv.drives(rec.vm) if i.drive == rec.drive), None)
        if info is None:
            bound.info("throttle: a recorded hold's drive is gone; record dropped")
            await holds.drop(*rec.key, only=rec)
            return
        now = await hv.io_limits(rec.vm, info)
        if not now.matches(rec.applied):
            bound.warning("throttle: a drive's limits were changed since a previous run "
                          "throttled it; leaving them as they are", limits=dict(now.values))
            await holds.drop(*rec.key, only=rec)
            return
        if dry_run:
            bound.warning("throttle: dry run; a limit a previous run set is left in place",
                          limits=dict(now.values))
            return
        await hv.set_io_limits(rec.vm, info, rec.original)
    except VmNotFound:
        unnamed = hv.health().unidentified
        if unnamed:
            if rec.key not in holds.waiting:
                holds.waiting.add(rec.key)
                bound.warning("throttle: a recorded hold's VM is not connected, and the "
                              "hypervisor has VMs it cannot name yet; the record is kept "
                              "and checked again when a VM connects", unidentified=unnamed)
            return
        bound.info("throttle: a recorded hold's VM is gone; record dropped")
        await holds.drop(*rec.key, only=rec)
        return
    except AutoextendError as exc:
        bound.warning("throttle: a recorded hold could not be checked now; kept",
                      error=str(exc))
        return
    bound.warning("throttle: lifted a write limit a previous run left on the drive "
                  "(the service stopped without lifting it)",
                  limits=dict(rec.original.values))
    await holds.drop(*rec.key, only=rec)
