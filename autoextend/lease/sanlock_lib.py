"""A small ctypes binding of libsanlock (Debian ``libsanlock1``, which the ``sanlock``
package depends on): only the calls the sanlock engine and ``lease init`` make.

Why ctypes and not Debian's ``python3-sanlock``: that module is built for Debian's
``/usr/bin/python3`` and installed in ``/usr/lib/python3/dist-packages``, which the project's
virtualenv (any interpreter, no system site-packages) does not see; exposing it would mean a
``.pth`` that pulls every Debian Python package into the venv, or a symlinked extension built
for another interpreter. libsanlock's ABI is the daemon's wire format (the structs below are
sent over its socket as they are), stable since sanlock 3.x; the binding is small and
needs nothing but the library the daemon package already installs.

Every call blocks (socket round trips to the daemon; ``direct_*`` do disk I/O): callers run
them in worker threads. Calls on one registered socket must be serialised by the caller.
The daemon's socket is ``$SANLOCK_RUN_DIR/sanlock.sock`` (default ``/run/sanlock``; the
library reads the variable once per process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from ctypes import POINTER, Structure, byref, c_char, c_char_p, c_int, c_uint32, c_uint64
from dataclasses import dataclass

from autoextend.errors import AutoextendError

NAME_LEN = 48
PATH_LEN = 1024

# struct sanlk_lockspace / sanlk_resource flags (sanlock.h)
LSF_ALIGN1M = 0x10
LSF_SECTOR512 = 0x100
LSF_SECTOR4K = 0x200
RES_ALIGN1M = 0x10
RES_SECTOR512 = 0x100
RES_SECTOR4K = 0x200
ADD_ASYNC = 0x1
REM_UNUSED = 0x2
ACQUIRE_OWNER_NOWAIT = 0x8

# sanlk_host.flags & HOST_MASK (sanlock_admin.h)
HOST_UNKNOWN, HOST_FREE, HOST_LIVE, HOST_FAIL, HOST_DEAD = 1, 2, 3, 4, 5
HOST_MASK = 0xF

# sanlock_rv.h: acquire results meaning "another host holds it" (or must time out first)
ACQUIRE_IDLIVE = -243
ACQUIRE_OWNED = -244
ACQUIRE_OTHER = -245
ACQUIRE_OWNED_RETRY = -247
BUSY = frozenset({-errno.EAGAIN, ACQUIRE_IDLIVE, ACQUIRE_OWNED, ACQUIRE_OTHER,
                  ACQUIRE_OWNED_RETRY, -errno.EBUSY})


class _Disk(Structure):
    _fields_ = [("path", c_char * PATH_LEN), ("offset", c_uint64), ("pad1", c_uint32),
                ("pad2", c_uint32)]


class _Lockspace(Structure):
    _fields_ = [("name", c_char * NAME_LEN), ("host_id", c_uint64), ("flags", c_uint32),
                ("host_id_disk", _Disk)]


class _Resource(Structure):
    """sanlk_resource with exactly one disk (num_disks = 1)."""

    _fields_ = [("lockspace_name", c_char * NAME_LEN), ("name", c_char * NAME_LEN),
                ("lver", c_uint64), ("data64", c_uint64), ("data32", c_uint32),
                ("unused", c_uint32), ("flags", c_uint32), ("num_disks", c_uint32),
                ("disks", _Disk * 1)]


class _Host(Structure):
    _fields_ = [("host_id", c_uint64), ("generation", c_uint64), ("timestamp", c_uint64),
                ("io_timeout", c_uint32), ("flags", c_uint32)]


class SanlockError(AutoextendError):
    """A libsanlock call failed: ``rv`` is its negative result (-errno or -SANLK_*)."""

    def __init__(self, op: str, rv: int) -> None:
        self.op = op
        self.rv = rv
        super().__init__(f"sanlock {op}: {strerror(rv)} ({rv})")

    @property
    def busy(self) -> bool:
        return self.rv in BUSY


class SanlockUnavailable(AutoextendError):
    """libsanlock cannot be loaded on this machine."""


@dataclass(frozen=True)
class HostInfo:
    host_id: int
    generation: int
    timestamp: int      # the host's own monotonic seconds at its renewal (0: free)
    io_timeout: int
    state: int          # HOST_*


_lib: ctypes.CDLL | None = None
_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]


def lib() -> ctypes.CDLL:
    """libsanlock, loaded once (SanlockUnavailable if it is not installed)."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("sanlock") or "libsanlock.so.1"
        try:
            loaded = ctypes.CDLL(name, use_errno=True)
        except OSError as err:
            raise SanlockUnavailable(f"libsanlock cannot be loaded ({err}); install the "
                                     "sanlock package") from None
        loaded.sanlock_strerror.restype = c_char_p
        loaded.sanlock_strerror.argtypes = [c_int]
        loaded.sanlock_inquire.argtypes = [c_int, c_int, c_uint32, POINTER(c_int),
                                           POINTER(ctypes.c_void_p)]
        loaded.sanlock_get_hosts.argtypes = [c_char_p, c_uint64, POINTER(ctypes.c_void_p),
                                             POINTER(c_int), c_uint32]
        _lib = loaded
    return _lib


def strerror(rv: int) -> str:
    if -200 < rv < 0:
        return os.strerror(-rv)
    try:
        text = lib().sanlock_strerror(rv)
    except SanlockUnavailable:
        text = None
    return text.decode(errors="replace") if text else f"error {rv}"


def _check(op: str, rv: int) -> int:
    if rv < 0:
        raise SanlockError(op, rv)
    return rv


def _name(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > NAME_LEN:
        raise ValueError(f"sanlock name {text!r} is longer than {NAME_LEN} bytes")
    return raw


def _path(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) >= PATH_LEN or b":" in raw:
        raise ValueError(f"sanlock path {text!r}: at most {PATH_LEN - 1} bytes, no ':'")
    return raw


def lockspace(name: str, host_id: int, path: str, offset: int, sector_size: int) -> _Lockspace:
    ls = _Lockspace()
    ls.name = _name(name)
    ls.host_id = host_id
    ls.flags = LSF_ALIGN1M | (LSF_SECTOR4K if sector_size == 4096 else LSF_SECTOR512)
    ls.host_id_disk.path = _path(path)
    ls.host_id_disk.offset = offset
    return ls


def resource(space: str, name: str, path: str, offset: int, sector_size: int) -> _Resource:
    res = _Resource()
    res.lockspace_name = _name(space)
    res.name = _name(name)
    res.flags = RES_ALIGN1M | (RES_SECTOR4K if sector_size == 4096 else RES_SECTOR512)
    res.num_disks = 1
    res.disks[0].path = _path(path)
    res.disks[0].offset = offset
    return res


# ---- formatting (no daemon: the library does the I/O) --------------------------------------

def direct_write_lockspace(ls: _Lockspace, io_timeout: int) -> None:
    _check("direct write_lockspace", lib().sanlock_direct_write_lockspace(
        byref(ls), 0, 0, c_uint32(io_timeout)))


def direct_write_resource(res: _Resource) -> None:
    _check("direct write_resource", lib().sanlock_direct_write_resource(byref(res), 0, 0, 0))


# ---- lockspace (host id) --------------------------------------------------------------------

def add_lockspace(ls: _Lockspace, io_timeout: int, *, wait: bool) -> int:
    """0 when added (or, without ``wait``, started); -EEXIST/-EINPROGRESS as returned."""
    rv = lib().sanlock_add_lockspace_timeout(byref(ls), 0 if wait else ADD_ASYNC,
                                             c_uint32(io_timeout))
    if rv in (-errno.EEXIST, -errno.EINPROGRESS):
        return int(rv)
    return _check("add_lockspace", rv)


def inq_lockspace(ls: _Lockspace) -> int:
    """0: joined; -EINPROGRESS: being added or removed; -ENOENT: not there."""
    rv = int(lib().sanlock_inq_lockspace(byref(ls), 0))
    if rv in (0, -errno.EINPROGRESS, -errno.ENOENT):
        return rv
    return _check("inq_lockspace", rv)


def rem_lockspace(ls: _Lockspace) -> None:
    """Leave the lockspace (its host id is released); -EBUSY while a lease is held in it."""
    rv = lib().sanlock_rem_lockspace(byref(ls), REM_UNUSED)
    if rv not in (-errno.ENOENT, -errno.EINPROGRESS):
        _check("rem_lockspace", rv)


def get_hosts(space: str, host_id: int = 0) -> list[HostInfo]:
    """The daemon's view of the lockspace's hosts (``host_id`` 0: every host seen)."""
    buf = ctypes.c_void_p()
    count = c_int(0)
    rv = lib().sanlock_get_hosts(_name(space), c_uint64(host_id), byref(buf), byref(count), 0)
    if rv == -errno.EAGAIN:  # joined, but the daemon has not read the lockspace yet
        return []
    _check("get_hosts", rv)
    try:
        if not buf.value or count.value <= 0:
            return []
        hosts = ctypes.cast(buf, POINTER(_Host))
        return [HostInfo(int(h.host_id), int(h.generation), int(h.timestamp),
                         int(h.io_timeout), int(h.flags) & HOST_MASK)
                for h in (hosts[i] for i in range(count.value))]
    finally:
        if buf.value:
            _libc.free(buf)


def read_resource_owner(res: _Resource) -> tuple[int, int] | None:
    """(owner host id, lver) of an exclusively held resource as on disk, or None if free
    (the daemon reads the lease area)."""
    copy = _Resource.from_buffer_copy(res)
    buf = ctypes.c_void_p()
    count = c_int(0)
    _check("read_resource_owners", lib().sanlock_read_resource_owners(
        byref(copy), 0, byref(buf), byref(count)))
    try:
        if not buf.value or count.value <= 0:
            return None
        owner = ctypes.cast(buf, POINTER(_Host))[0]
        return int(owner.host_id), int(copy.lver)
    finally:
        if buf.value:
            _libc.free(buf)


# ---- resource (the SPM lease), on a registered connection -----------------------------------

def register() -> int:
    """A registered connection: this process's leases live and die with it."""
    return _check("register", lib().sanlock_register())


def acquire(sock: int, res: _Resource, *, nowait: bool = True) -> None:
    args = (POINTER(_Resource) * 1)(ctypes.pointer(res))
    _check("acquire", lib().sanlock_acquire(sock, -1, ACQUIRE_OWNER_NOWAIT if nowait else 0,
                                            1, args, None))


def release(sock: int, res: _Resource) -> None:
    args = (POINTER(_Resource) * 1)(ctypes.pointer(res))
    _check("release", lib().sanlock_release(sock, -1, 0, 1, args))


def inquire(sock: int) -> dict[str, int]:
    """{"LOCKSPACE:RESOURCE": lver} of the leases held on ``sock`` (no disk I/O)."""
    state = ctypes.c_void_p()
    count = c_int(0)
    _check("inquire", lib().sanlock_inquire(sock, -1, 0, byref(count), byref(state)))
    try:
        text = ctypes.string_at(state.value).decode(errors="replace") if state.value else ""
    finally:
        if state.value:
            _libc.free(state)
    held: dict[str, int] = {}
    for item in text.split():
        # LOCKSPACE:NAME:PATH:OFFSET[:PATH:OFFSET...]:LVER (paths escape ':' as '\:')
        parts = item.split(":")
        try:
            held[f"{parts[0]}:{parts[1]}"] = int(parts[-1])
        except (IndexError, ValueError):
            continue
    return held
